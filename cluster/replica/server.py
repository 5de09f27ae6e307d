"""gRPC server for one replica: serves replica.proto over an :class:`Engine`.

The router talks to this server, not to the Ray actor: tokens stream over
HTTP/2 straight from the replica's node to the router, and Ray carries only
control calls (start, health, drain, stop).  This keeps Ray's object store and
actor-call overhead off the per-token path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from cluster.config import InternalTLSConfig
from cluster.engine.base import ChatMessage, Engine, EngineRequest, EngineRequestError, Sampling
from cluster.proto import replica_pb2, replica_pb2_grpc
from cluster.replica.prefix_feed import attach_prefix_feed
from cluster.tls import replica_server_credentials

log = logging.getLogger(__name__)

MIN_LOAD_INTERVAL_MS = 10
#: Weight of the newest sample in the reported TTFT mean: about the last 10
#: requests count, so the signal follows a load change within a second or two.
TTFT_EWMA_ALPHA = 0.2


def to_engine_request(req: replica_pb2.ReplicaGenerateRequest) -> EngineRequest:
    s = req.sampling
    sampling = Sampling(
        max_tokens=s.max_tokens or 256,
        temperature=s.temperature,
        top_p=s.top_p or 1.0,
        top_k=s.top_k if s.top_k > 0 else -1,
        seed=s.seed if s.HasField("seed") else None,
        stop=list(s.stop),
    )
    which = req.WhichOneof("input")
    messages = None
    prompt = None
    if which == "chat":
        messages = [ChatMessage(role=m.role, content=m.content) for m in req.chat.messages]
    else:
        prompt = req.prompt
    return EngineRequest(
        request_id=req.request_id,
        sampling=sampling,
        prompt=prompt,
        messages=messages,
        resume_token_ids=list(req.resume_token_ids),
        resume_text=req.resume_text if req.HasField("resume_text") else None,
    )


class ReplicaServicer(replica_pb2_grpc.ReplicaServicer):
    def __init__(self, engine: Engine, replica_id: str, model: str) -> None:
        self.engine = engine
        self.replica_id = replica_id
        self.model = model
        self.draining = False
        self.in_flight: set[str] = set()
        self.recent_ttft_s = 0.0
        #: Text keys of what the prefix cache holds, for the load stream (None: the engine has no KV events).
        self.prefix_feed = attach_prefix_feed(engine)
        self._idle = asyncio.Event()
        self._idle.set()

    async def Generate(
        self, request: replica_pb2.ReplicaGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[replica_pb2.ReplicaChunk]:
        if self.draining:
            # The router already dropped us from its set; a late request is
            # refused cleanly so the router retries it elsewhere.
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"replica {self.replica_id} is draining")
        try:
            ereq = to_engine_request(request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        rid = ereq.request_id
        self.in_flight.add(rid)
        self._idle.clear()
        finished = False
        started = time.monotonic()
        first = True
        try:
            async for d in self.engine.generate(ereq):
                if first:
                    first = False
                    ttft = time.monotonic() - started
                    a = TTFT_EWMA_ALPHA
                    self.recent_ttft_s = ttft if self.recent_ttft_s == 0 else (1 - a) * self.recent_ttft_s + a * ttft
                if d.finish_reason is not None:
                    finished = True
                yield replica_pb2.ReplicaChunk(
                    text=d.text,
                    token_ids=d.token_ids,
                    finish_reason=d.finish_reason or "",
                    prompt_tokens=d.prompt_tokens,
                    completion_tokens=d.completion_tokens,
                    cached_prompt_tokens=d.cached_prompt_tokens,
                )
        except EngineRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            # Client cancel or deadline: grpc.aio cancels this coroutine; the
            # engine must drop the request now, not when it would have ended.
            if not finished:
                await asyncio.shield(self.engine.abort(rid))
            self.in_flight.discard(rid)
            if not self.in_flight:
                self._idle.set()

    async def Abort(self, request: replica_pb2.AbortRequest, context: grpc.aio.ServicerContext) -> replica_pb2.AbortResponse:
        return replica_pb2.AbortResponse(found=await self.engine.abort(request.request_id))

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
        )

    async def StreamLoad(
        self, request: replica_pb2.LoadStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[replica_pb2.LoadReport]:
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
        return replica_pb2.HealthResponse(ready=not self.draining, replica_id=self.replica_id, model=self.model)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests, wait for in-flight ones; returns how many were cut off."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timed out", extra={"replica": self.replica_id, "left": len(self.in_flight)})
        return len(self.in_flight)


async def start_server(
    servicer: ReplicaServicer, host: str = "0.0.0.0", port: int = 0, tls: InternalTLSConfig | None = None
) -> tuple[grpc.aio.Server, int]:
    """Serve ``servicer``; with ``tls`` (``internal_tls``), only clients with a cluster certificate get in."""
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
    return server, bound
