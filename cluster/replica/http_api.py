"""A replica's own OpenAI-compatible HTTP API (``llm-cluster replica --http-port``), for gateways that are not ours.

Foreign gateways (``vllm-router``, ``smg``) can route to the very replicas our
router uses.  Routes, as ``vllm serve`` answers them: ``POST
/v1/chat/completions``, ``POST /v1/completions`` (SSE streaming or one JSON
body), ``POST /tokenize``, ``POST /detokenize``, ``GET /v1/models``,
``GET /health`` (and ``/healthz``, ``/readyz``), plus the probes SGLang-style
gateways call: ``/get_model_info``, ``/get_server_info`` (``/server_info``),
``/get_load``, ``/health_generate``.

A body is parsed as strictly as the router parses it
(:mod:`cluster.common.openai_body`: 400 naming the field), its ``model`` must
be this replica's model or one of its loaded LoRA adapters (else 404, as
vLLM), and it is served through the replica servicer's ``serve`` (the path of
the gRPC API: counted in flight, aborted when the client goes away), with the
engine's bytes written as they come.  No router code: the replica never
imports the router.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cluster.common.openai_body import InvalidRequest, parse_body
from cluster.engine.base import CHAT, COMPLETIONS, DETOKENIZE, TOKENIZE, Chunk, OpenAICall, error_body
from cluster.replica.server import ReplicaServicer

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
#: Longest request id accepted from a client (the router's bound too).
MAX_REQUEST_ID = 128
#: Largest request body (the router's default ``router.max_body_bytes``).
MAX_BODY_BYTES = 4 * 1024 * 1024


def _error(status: int, message: str, etype: str = "BadRequestError", param: str | None = None) -> web.Response:
    return web.Response(body=error_body(message, status, etype, param), status=status, content_type="application/json")


class ReplicaHTTP:
    """The aiohttp app over one :class:`ReplicaServicer`."""

    def __init__(self, servicer: ReplicaServicer, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.servicer = servicer
        self.app = web.Application(client_max_size=max_body_bytes)
        post = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/tokenize": TOKENIZE, "/detokenize": DETOKENIZE}
        self.app.add_routes([web.post(path, self._endpoint(ep)) for path, ep in post.items()])
        self.app.add_routes(
            [web.get(path, self.health) for path in ("/health", "/healthz", "/readyz", "/health_generate")]
            + [
                web.get("/v1/models", self.models),
                web.get("/get_model_info", self.model_info),
                web.get("/get_server_info", self.server_info),
                web.get("/server_info", self.server_info),
                web.get("/get_load", self.get_load),
            ]
        )

    # ---- probes -------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if self.servicer.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        s = self.servicer
        card = s.engine.model_card
        ids = [s.model, *self._adapters()]
        data = [
            {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "llm-cluster",
                "root": (card.root or s.model) if name == s.model else name,
                "parent": (card.parent or None) if name == s.model else s.model,
                "max_model_len": card.max_model_len or None,
            }
            for name in ids
        ]
        return web.json_response({"object": "list", "data": data})

    async def model_info(self, request: web.Request) -> web.Response:
        s = self.servicer
        return web.json_response(
            {"model_path": s.model, "tokenizer_path": s.model, "is_generation": True, "max_model_len": s.engine.model_card.max_model_len}
        )

    async def server_info(self, request: web.Request) -> web.Response:
        snap = self.servicer.load_report()
        return web.json_response(
            {
                "model_path": self.servicer.model,
                "served_model_name": self.servicer.model,
                "max_total_num_tokens": snap.kv_capacity_tokens,
                "running": snap.running,
                "waiting": snap.waiting,
                "kv_cache_usage": snap.kv_cache_usage,
                "prefix_cache_queries": snap.prefix_cache_queries,
                "prefix_cache_hits": snap.prefix_cache_hits,
            }
        )

    async def get_load(self, request: web.Request) -> web.Response:
        snap = self.servicer.load_report()
        return web.json_response({"running": snap.running, "waiting": snap.waiting, "load": snap.running + snap.waiting})

    # ---- inference ----------------------------------------------------------
    def _endpoint(self, endpoint: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, endpoint)

        return handler

    def _adapters(self) -> tuple[str, ...]:
        return tuple(self.servicer.engine.load().loaded_adapters)

    def _call(self, request: web.Request, endpoint: str, body: dict[str, Any]) -> OpenAICall | web.Response:
        """The engine's call for ``body``, or the error response that refuses it."""
        model = body.setdefault("model", self.servicer.model)  # vLLM's server takes its only model too
        if model != self.servicer.model and model not in self._adapters():
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        rid = body.get("request_id") if isinstance(body.get("request_id"), str) else None
        rid = rid or request.headers.get("x-request-id") or uuid.uuid4().hex
        if len(rid) > MAX_REQUEST_ID or not rid.isprintable():
            return _error(400, f"request_id: at most {MAX_REQUEST_ID} printable characters", param="request_id")
        if endpoint in (CHAT, COMPLETIONS):
            body["request_id"] = rid  # the response id (chatcmpl-<id>), as the router sets it
        return OpenAICall(request_id=rid, endpoint=endpoint, body=body)

    async def _serve(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        if self.servicer.draining:
            return _error(503, f"replica {self.servicer.replica_id} is draining", "ServiceUnavailableError")
        try:
            body = parse_body(await request.read())
        except InvalidRequest as exc:
            return _error(400, str(exc), param=exc.param)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body larger than {request.app._client_max_size} bytes", param="body")
        call = self._call(request, endpoint, body)
        if isinstance(call, web.Response):
            return call
        async with contextlib.aclosing(self.servicer.serve(call)) as chunks:
            return await _respond(request, chunks)


async def _respond(request: web.Request, chunks: AsyncIterator[Chunk]) -> web.StreamResponse:
    """The first chunk decides: a whole JSON body (an answer or an error), or SSE events written as they come."""
    first = await anext(chunks, None)
    while first is not None and not first.data:  # progress notes of a non-streamed answer: nothing to write
        first = await anext(chunks, None)
    if first is None:
        return _error(502, "the engine ended the request without an answer", "InternalServerError")
    if not first.data.startswith(b"data:"):
        async for _ in chunks:  # nothing more comes; the request ends there
            pass
        return web.Response(body=first.data, status=first.status or 200, content_type="application/json")
    resp = web.StreamResponse(status=first.status or 200, headers=_SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(first.data)
    async for c in chunks:
        await resp.write(c.data)
    await resp.write_eof()
    return resp


async def start_replica_http(servicer: ReplicaServicer, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the replica's HTTP API on ``host:port`` (0: any free port); (runner, bound port)."""
    runner = web.AppRunner(ReplicaHTTP(servicer).app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # type: ignore[union-attr]
    return runner, bound
