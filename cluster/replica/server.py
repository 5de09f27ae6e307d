"""gRPC server for one replica: serves replica.proto over an :class:`Engine`.

The router talks to this server, not to the Ray actor: tokens stream over
HTTP/2 straight from the replica's node to the router, and Ray carries only
control calls (start, health, drain, stop).  This keeps Ray's object store and
actor-call overhead off the per-token path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import grpc

from cluster.config import InternalTLSConfig
from cluster.engine.base import (
    CHAT,
    COMPLETIONS,
    DETOKENIZE,
    EMBEDDINGS,
    TOKENIZE,
    Chunk,
    Engine,
    EngineRequestError,
    OpenAICall,
    Resume,
    error_body,
    error_chunk,
)
from cluster.proto import replica_pb2, replica_pb2_grpc
from cluster.replica.encode import sse_to_proto
from cluster.replica.errors import CallAborted
from cluster.replica.prefix_feed import attach_prefix_feed
from cluster.replica.relay import RelayServer
from cluster.tls import replica_server_credentials

log = logging.getLogger(__name__)

MIN_LOAD_INTERVAL_MS = 10
#: Weight of the newest sample in the reported TTFT mean: about the last 10
#: requests count, so the signal follows a load change within a second or two.
TTFT_EWMA_ALPHA = 0.2

_ENDPOINTS = {
    replica_pb2.CHAT: CHAT,
    replica_pb2.COMPLETIONS: COMPLETIONS,
    replica_pb2.TOKENIZE: TOKENIZE,
    replica_pb2.DETOKENIZE: DETOKENIZE,
    replica_pb2.EMBEDDINGS: EMBEDDINGS,
}


def to_call(req: replica_pb2.OpenAIRequest) -> OpenAICall | replica_pb2.OpenAIChunk:
    """The engine's call, or the 400 chunk for a body that is no JSON object."""
    endpoint = _ENDPOINTS.get(req.endpoint)
    if endpoint is None:
        return replica_pb2.OpenAIChunk(data=error_body(f"unknown endpoint {req.endpoint}", 404, "NotFoundError"), status=404)
    try:
        body = json.loads(req.body)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return replica_pb2.OpenAIChunk(data=error_body("the request body must be a JSON object", 400, param="body"), status=400)
    resume = Resume(list(req.resume.token_ids), req.resume.text) if req.HasField("resume") and req.resume.token_ids else None
    return OpenAICall(request_id=req.request_id, endpoint=endpoint, body=body, resume=resume)


def _to_pb(c: Chunk, data: bytes | None = None) -> replica_pb2.OpenAIChunk:
    return replica_pb2.OpenAIChunk(
        data=c.data if data is None else data,
        status=c.status,
        token_ids=c.token_ids,
        text=c.text,
        resumable=c.resumable,
        tool_call=c.tool_call,
        finish_reason=c.finish_reason or "",
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        cached_prompt_tokens=c.cached_prompt_tokens,
    )


def encode(c: Chunk, fmt: int, request_id: str) -> list[replica_pb2.OpenAIChunk]:
    """One engine chunk for the wire: as it is (SSE/JSON), or as GenerateChunks for a gRPC client."""
    if fmt != replica_pb2.PROTO or (c.status and c.status >= 300) or not c.data:
        return [_to_pb(c)]
    frames, error = sse_to_proto(request_id, c.data, c.token_ids)
    if error is not None:
        err = error.get("error") if isinstance(error.get("error"), dict) else {}
        code = int(err.get("code") or 500)
        body = json.dumps(error, ensure_ascii=False).encode()
        return [*[replica_pb2.OpenAIChunk(data=f) for f in frames], replica_pb2.OpenAIChunk(data=body, status=code)]
    if not frames:
        return [_to_pb(c, b"")] if (c.status or c.finish_reason) else []
    out = [replica_pb2.OpenAIChunk(data=f) for f in frames[:-1]]
    out.append(_to_pb(c, frames[-1]))
    if c.status:
        out[0].status = c.status
    return out


class ReplicaServicer(replica_pb2_grpc.ReplicaServicer):
    def __init__(self, engine: Engine, replica_id: str, model: str) -> None:
        self.engine = engine
        #: The relay stream's port, for Health (0: not served; set by whoever starts it).
        self.relay_port = 0
        self.replica_id = replica_id
        self.model = model
        self.draining = False
        #: request id -> the task serving it (Abort cancels it).
        self.in_flight: dict[str, asyncio.Task[object]] = {}
        self.recent_ttft_s = 0.0
        #: Text keys of what the prefix cache holds, for the load stream (None: the engine has no KV events).
        self.prefix_feed = attach_prefix_feed(engine)
        self._idle = asyncio.Event()
        self._idle.set()

    def _observe_ttft(self, started: float) -> None:
        ttft = time.monotonic() - started
        a = TTFT_EWMA_ALPHA
        self.recent_ttft_s = ttft if self.recent_ttft_s == 0 else (1 - a) * self.recent_ttft_s + a * ttft

    async def OpenAI(self, request: replica_pb2.OpenAIRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[replica_pb2.OpenAIChunk]:
        try:
            async with contextlib.aclosing(self.chunks(request)) as chunks:
                async for out in chunks:
                    yield out
        except CallAborted as exc:
            await context.abort(exc.code, exc.message)

    async def chunks(self, request: replica_pb2.OpenAIRequest) -> AsyncIterator[replica_pb2.OpenAIChunk]:
        """The OpenAI call's answer as wire chunks, for the gRPC method and the relay stream (cluster/replica/relay.py) alike.

        Raises :class:`CallAborted` to end the call with a status instead.
        """
        if self.draining:
            # The router already dropped us from its set; a late request is
            # refused cleanly so the router retries it elsewhere.
            raise CallAborted(grpc.StatusCode.UNAVAILABLE, f"replica {self.replica_id} is draining")
        call = to_call(request)
        if isinstance(call, replica_pb2.OpenAIChunk):
            yield call
            return
        async with contextlib.aclosing(self.serve(call)) as chunks:
            async for c in chunks:
                for out in encode(c, request.format, call.request_id):
                    yield out

    async def serve(self, call: OpenAICall) -> AsyncIterator[Chunk]:
        """The engine's answer to ``call``, counted in flight (``Abort`` and ``drain`` see it) and timed for the TTFT mean.

        Both of the replica's APIs serve through here: the gRPC ``OpenAI`` call
        and its own HTTP API (cluster.replica.http_api).
        """
        rid = call.request_id
        task = asyncio.current_task()
        if task is not None:
            self.in_flight[rid] = task
        self._idle.clear()
        started = time.monotonic()
        first = True
        try:
            async with contextlib.aclosing(self.engine.serve(call)) as stream:
                async for c in stream:
                    if first and c.data:
                        first = False
                        self._observe_ttft(started)
                    yield c
        except EngineRequestError as exc:
            yield error_chunk(str(exc))
        finally:
            # Client cancel or deadline: the caller's task is cancelled and
            # closing the engine's stream aborts the request there.
            if self.in_flight.get(rid) is task:
                del self.in_flight[rid]
            if not self.in_flight:
                self._idle.set()

    async def Abort(self, request: replica_pb2.AbortRequest, context: grpc.aio.ServicerContext) -> replica_pb2.AbortResponse:
        task = self.in_flight.get(request.request_id)
        if task is not None:
            task.cancel()
        return replica_pb2.AbortResponse(found=task is not None)

    def load_report(self) -> replica_pb2.LoadReport:
        snap = self.engine.load()
        return replica_pb2.LoadReport(
            replica_id=self.replica_id,
            running=snap.running,
            waiting=snap.waiting,
            kv_cache_usage=snap.kv_cache_usage,
            prefix_cache_queries=snap.prefix_cache_queries,
            prefix_cache_hits=snap.prefix_cache_hits,
            timestamp=time.time(),
            draining=self.draining,
            recent_ttft_s=self.recent_ttft_s,
            kv_capacity_tokens=getattr(self.engine, "kv_capacity_tokens", 0) or 0,
            active_adapters=snap.active_adapters,
            loaded_adapters=snap.loaded_adapters,
            adapter_swaps=snap.adapter_swaps,
        )

    async def StreamLoad(
        self, request: replica_pb2.LoadStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[replica_pb2.LoadReport]:
        async with contextlib.aclosing(self.load_reports(request)) as reports:
            async for report in reports:
                yield report

    async def load_reports(self, request: replica_pb2.LoadStreamRequest) -> AsyncIterator[replica_pb2.LoadReport]:
        """The load stream, for the gRPC ``StreamLoad`` and the relay port's ``LOAD`` alike."""
        interval = max(request.interval_ms or 100, MIN_LOAD_INTERVAL_MS) / 1000
        feed = self.prefix_feed.subscribe() if self.prefix_feed is not None else None
        try:
            while True:
                report = self.load_report()
                if feed is not None:
                    feed.fill(report)  # this stream's own changes since its last report
                yield report
                await asyncio.sleep(interval)
        finally:
            if feed is not None:
                self.prefix_feed.unsubscribe(feed)  # type: ignore[union-attr]

    async def Health(self, request: replica_pb2.HealthRequest, context: grpc.aio.ServicerContext) -> replica_pb2.HealthResponse:
        card = self.engine.model_card
        return replica_pb2.HealthResponse(
            ready=not self.draining,
            replica_id=self.replica_id,
            model=self.model,
            max_model_len=card.max_model_len,
            root=card.root,
            parent=card.parent,
            relay_port=self.relay_port,
        )

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests, wait for in-flight ones; returns how many were cut off."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timed out", extra={"replica": self.replica_id, "left": len(self.in_flight)})
        return len(self.in_flight)


class ReplicaServers:
    """A replica's two ports over one servicer: gRPC (replica.proto) and the relay stream (cluster/replica/relay.py)."""

    def __init__(self, grpc_server: grpc.aio.Server, relay: RelayServer) -> None:
        self.grpc = grpc_server
        self.relay = relay

    @property
    def relay_port(self) -> int:
        return self.relay.port

    async def stop(self, grace: float | None = None) -> None:
        await asyncio.gather(self.relay.close(grace or 0.0), self.grpc.stop(grace))


async def start_server(
    servicer: ReplicaServicer, host: str = "0.0.0.0", port: int = 0, tls: InternalTLSConfig | None = None
) -> tuple[ReplicaServers, int]:
    """Serve ``servicer`` on gRPC (returned: its port) and on a relay port beside it (``Health`` names it).

    With ``tls`` (``internal_tls``), only clients with a cluster certificate get in, on either port.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    replica_pb2_grpc.add_ReplicaServicer_to_server(servicer, server)
    creds = replica_server_credentials(tls)
    addr = f"{host}:{port}"
    bound = server.add_secure_port(addr, creds) if creds is not None else server.add_insecure_port(addr)
    await server.start()
    relay = RelayServer(servicer)
    await relay.start(host, 0, tls)
    return ReplicaServers(server, relay), bound
