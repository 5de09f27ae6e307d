"""The OpenAI-compatible HTTP API, beside the gRPC API in the same process.

Routes: ``GET /v1/models`` (with ``max_model_len``, ``root``, ``parent`` as
vLLM lists them), ``POST /v1/chat/completions``, ``POST /v1/completions``
(SSE streaming and not), ``POST /tokenize``, ``POST /detokenize``: the body
is relayed to a replica of its model, whose engine answers exactly as vLLM's
OpenAI server does (the replica encodes the bytes; this module writes them),
``GET /healthz`` (liveness; ``/health`` too, as vLLM), ``GET /readyz`` (200 only while a replica is
ready) and ``GET /openapi.json`` (the API's OpenAPI schema, :mod:`openapi`).
Inference and model listing pass the :class:`Gate` (API key → 401, limits /
full queue → 429 with ``Retry-After``); health and schema need no key.  Errors use OpenAI's JSON shape ``{"error": {message, type, param,
code}}`` so the official client raises its usual exceptions; an engine's own
error (4xx with vLLM's message) is relayed as the engine wrote it.  It shares
the gRPC front end's balancer and validation, so both APIs route and reject
alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

from cluster.config import RouterConfig
from cluster.proto import replica_pb2
from cluster.router.auth import bearer
from cluster.router.balancer import Balancer, RouterError
from cluster.router.gate import Gate, Refused
from cluster.router.lora import AdapterAdmin, admin_body, check_admin, check_allowed, resolve_adapter
from cluster.router.metrics import request_done
from cluster.router.openapi import openapi_schema
from cluster.router.validation import (
    CHAT,
    COMPLETIONS,
    DETOKENIZE,
    EMBEDDINGS,
    TOKENIZE,
    InvalidRequest,
    RelayRequest,
    check_context,
    parse_body,
    relay_request,
)
from cluster.tls import http_ssl_context

log = logging.getLogger(__name__)

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
}


def error_response(
    status: int, message: str, etype: str = "invalid_request_error", param: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def _router_error(exc: RouterError) -> web.Response:
    status, etype = _HTTP_STATUS.get(exc.code, (500, "internal_error"))
    headers = None
    if isinstance(exc, Refused):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="llm-cluster"'}
    return error_response(status, exc.message, etype, headers=headers)


def _model_card(model: str, root: str, parent: str, max_model_len: int, created: int) -> dict[str, Any]:
    """One entry of GET /v1/models, shaped as vLLM's ``ModelCard``."""
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex[:16]}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root or model,
        "parent": parent or None,
        "max_model_len": max_model_len or None,
        "permission": [permission],
    }


class OpenAIServer:
    def __init__(self, balancer: Balancer, config: RouterConfig, gate: Gate | None = None, admin: AdapterAdmin | None = None) -> None:
        self.balancer = balancer
        self.admin = admin
        self.config = config
        self.gate = gate or Gate(config, balancer)
        self.app = web.Application(client_max_size=config.max_body_bytes, middlewares=[self._errors])
        self.app.add_routes(
            [
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/completions", self.completions),
                web.post("/tokenize", self.tokenize),
                web.post("/detokenize", self.detokenize),
                web.post("/v1/embeddings", self.embeddings),
                web.post("/v1/load_lora_adapter", self.load_lora_adapter),
                web.post("/v1/unload_lora_adapter", self.unload_lora_adapter),
                web.get("/healthz", self.healthz),
                # vLLM's server answers GET /health; tools built for it (guidellm, gateways) probe that path.
                web.get("/health", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/openapi.json", self.openapi),
            ]
        )

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body larger than {self.config.max_body_bytes} bytes")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return error_response(exc.status, exc.reason or "error", "invalid_request_error")
            raise
        except Exception:
            log.exception("unhandled error in HTTP handler")
            return error_response(500, "internal error", "internal_error")

    # ---- routes -------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        ready = sum(len(v) for v in self.balancer.replicas.by_model.values())
        return web.json_response({"status": "ok", "ready_replicas": ready})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = sum(len(v) for v in self.balancer.replicas.by_model.values())
        return web.json_response({"ready": ready > 0, "ready_replicas": ready}, status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_schema(sorted(self.balancer.replicas.models)))

    async def models(self, request: web.Request) -> web.Response:
        try:
            self.gate.authenticate(bearer(request.headers.get("Authorization")))
        except RouterError as exc:
            return _router_error(exc)
        now = int(time.time())
        reps = self.balancer.replicas
        data = []
        for m in sorted(reps.models):
            handles = reps.by_model.get(m, ())
            root = next((h.root for h in handles if h.root), "")
            parent = next((h.parent for h in handles if h.parent), "")
            data.append(_model_card(m, root, parent, reps.max_model_len(m), now))
        for adapter, base in sorted(reps.adapters.items()):
            data.append(_model_card(adapter, adapter, base, reps.max_model_len(base), now))
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, COMPLETIONS)

    async def tokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, TOKENIZE)

    async def detokenize(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, DETOKENIZE)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, EMBEDDINGS)

    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        return await self._admin(request, load=True)

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        return await self._admin(request, load=False)

    async def _admin(self, request: web.Request, load: bool) -> web.Response:
        """vLLM's runtime LoRA routes, answered by the controller (it owns every model's adapter set)."""
        try:
            tenant = self.gate.authenticate(bearer(request.headers.get("Authorization")))
            check_admin(tenant, self.gate.keys is not None)
        except RouterError as exc:
            return _router_error(exc)
        if self.admin is None:
            msg = "runtime LoRA loading needs the cluster's controller (this router has a fixed replica list)"
            return error_response(404, msg, "NotFoundError")
        try:
            name, path, model = admin_body(await request.read(), load)
        except ValueError as exc:
            field = str(exc).split(":", 1)[0]
            return error_response(400, str(exc), param=field)
        res = await (self.admin.load(name, path, model) if load else self.admin.unload(name))
        if not res.get("ok"):
            status = int(res.get("status") or 400)
            return error_response(status, str(res.get("message")), "NotFoundError" if status == 404 else "BadRequestError")
        # Answer once this router's endpoint set shows the change, so the caller's next request sees it.
        await self.balancer.replicas.wait_until(lambda: (name in self.balancer.replicas.adapters) == load, 5.0)
        return web.Response(text=str(res.get("message")), status=200)

    # ---- shared path --------------------------------------------------------
    async def _read(self, request: web.Request, endpoint: str) -> RelayRequest:
        body = parse_body(await request.read())
        req = relay_request(
            endpoint,
            body,
            models=sorted(self.balancer.replicas.models),
            request_id=request.headers.get("x-request-id"),
            session_id=request.headers.get("x-session-id"),
            routing_policy=request.headers.get("x-routing-policy"),
            default_max_tokens=self.config.default_max_tokens,
        )
        reps = self.balancer.replicas
        resolve_adapter(req, reps.models, reps.adapters)
        if self.balancer.known_model(req.model):
            check_context(req, reps.max_model_len(req.model))
        return req

    async def _relay(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        # Authenticate before reading the body: a caller without a key learns nothing else.
        try:
            tenant = self.gate.authenticate(bearer(request.headers.get("Authorization")))
        except RouterError as exc:
            return _router_error(exc)
        try:
            req = await self._read(request, endpoint)
        except InvalidRequest as exc:
            return error_response(400, str(exc), param=exc.param)
        try:
            check_allowed(tenant, req.adapter or req.model)
        except RouterError as exc:
            return _router_error(exc)
        if not self.balancer.known_model(req.model):
            msg = f"The model `{req.model}` does not exist; see GET /v1/models"
            resp: web.StreamResponse = error_response(404, msg, "NotFoundError", "model")
        else:
            resp = await self._write(request, req, self.gate.generate(tenant, req, self.config.request_timeout_s))
        request_done(self.balancer, req.adapter or req.model, "http", str(resp.status))
        return resp

    async def _write(self, request: web.Request, req: RelayRequest, stream: AsyncIterator[replica_pb2.OpenAIChunk]) -> web.StreamResponse:
        """Write the replica's bytes: one JSON body, or SSE events as they come.

        Once an SSE response's headers are out, the request gets a sink (:class:`SseSink`): the balancer may
        then write the rest of the stream to the client's socket itself (cluster/router/attempt.py).
        """
        resp: web.StreamResponse | None = None
        try:
            async with contextlib.aclosing(stream) as s:
                async for c in s:
                    if not c.data:  # a chunk with a finish reason but no bytes: nothing to write
                        continue
                    if resp is None:
                        if not c.data.startswith(b"data:"):  # a whole JSON body (answer or error)
                            async for _ in s:  # the stream's end (nothing more comes): its metrics are taken there
                                pass
                            return web.Response(body=c.data, status=c.status or 200, content_type="application/json")
                        # Headers go out with the first bytes, so an error before
                        # them (no replica, a refusal) still gets a proper status.
                        resp = web.StreamResponse(status=c.status or 200, headers=_SSE_HEADERS)
                        await resp.prepare(request)
                        await resp.write(c.data)
                        req.sink = SseSink.of(request, resp)
                        continue
                    await resp.write(c.data)
        except RouterError as exc:
            if resp is None:
                return _router_error(exc)
            status, etype = _HTTP_STATUS.get(exc.code, (500, "internal_error"))
            err = {"error": {"message": exc.message, "type": etype, "param": None, "code": status}}
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n")
        if resp is None:  # a stream with no chunk at all
            return error_response(502, "the replica ended the request without an answer", "internal_error")
        await resp.write_eof()
        return resp


_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
#: A client's socket buffer above this pauses its stream's replica; it resumes below the low mark.
SINK_HIGH, SINK_LOW = 256 * 1024, 64 * 1024


class SseSink:
    """The client's socket, for a stream whose headers are out: bytes framed as aiohttp's own writer frames them.

    HTTP/1.1 responses without a length are chunked (``Transfer-Encoding: chunked``, set by aiohttp at
    ``prepare``), so each write is one chunk; ``write_eof`` then ends the body as usual.  Writing here skips
    aiohttp's per-write bookkeeping (there is none this response needs: no compression, no length).
    """

    __slots__ = ("_chunked", "_transport")

    def __init__(self, transport: Any, chunked: bool) -> None:
        self._transport = transport
        self._chunked = chunked

    @classmethod
    def of(cls, request: web.Request, resp: web.StreamResponse) -> SseSink | None:
        transport = request.transport
        if transport is None or resp.compression:
            return None
        return cls(transport, resp.headers.get("Transfer-Encoding", "").lower() == "chunked")

    def write(self, data: bytes) -> bool:
        """Write ``data``; False when the client's buffer is full (the caller pauses until :meth:`drained`)."""
        t = self._transport
        if t.is_closing():  # the client left: aiohttp cancels the request's task, nothing to write to
            return True
        t.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return t.get_write_buffer_size() <= SINK_HIGH

    async def drained(self) -> None:
        """Until the client has read its buffer down (polled: only a client slower than the engine gets here)."""
        t = self._transport
        while not t.is_closing() and t.get_write_buffer_size() > SINK_LOW:  # noqa: ASYNC110 - a socket buffer, no event
            await asyncio.sleep(0.005)


async def start_http_server(server: OpenAIServer, host: str, port: int, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """``reuse_port``: share ``port`` with the other router workers on this node (SO_REUSEPORT)."""
    runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    ssl = http_ssl_context(server.config.tls)
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None, ssl_context=ssl)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # type: ignore[union-attr]
    return runner, bound
