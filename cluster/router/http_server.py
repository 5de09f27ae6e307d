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
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from cluster.config import RouterConfig
from cluster.proto import replica_pb2
from cluster.router.auth import Tenant, bearer
from cluster.router.balancer import Balancer, RouterError
from cluster.router.gate import Gate, Refused
from cluster.router.http_fast import FastFront, sweep_idle
from cluster.router.http_reply import Reply, WebReply, error_body
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


def _router_response(exc: RouterError) -> web.Response:
    reply = WebReply(None)  # type: ignore[arg-type]
    _router_error(reply, exc)
    assert isinstance(reply.resp, web.Response)
    return reply.resp


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
            return _router_response(exc)
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
            return _router_response(exc)
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
    def _read(self, raw: bytes, headers: Any, endpoint: str) -> RelayRequest:
        body = parse_body(raw)
        req = relay_request(
            endpoint,
            body,
            models=self.balancer.replicas.models,
            request_id=headers.get("x-request-id"),
            session_id=headers.get("x-session-id"),
            routing_policy=headers.get("x-routing-policy"),
            default_max_tokens=self.config.default_max_tokens,
            raw=raw,
        )
        reps = self.balancer.replicas
        resolve_adapter(req, reps.models, reps.adapters)
        if self.balancer.known_model(req.model):
            check_context(req, reps.max_model_len(req.model))
        return req

    async def _relay(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        reply = WebReply(request)
        await self.relay(endpoint, request.headers, request.read, reply)
        assert reply.resp is not None
        return reply.resp

    async def relay(self, endpoint: str, headers: Any, read: bytes | Callable[[], Awaitable[bytes]], reply: Reply) -> None:
        """One inference request, for either HTTP front (aiohttp's, or the fast path's, cluster/router/http_fast.py):
        ``headers.get(name)`` with lower-case names, ``read()`` the body (or the body, already read: the fast
        front's), the answer written through ``reply``."""
        # Authenticate before reading the body: a caller without a key learns nothing else.
        try:
            tenant = self.gate.authenticate(bearer(headers.get("authorization")))
        except RouterError as exc:
            return _router_error(reply, exc)
        try:
            req = self._read(read if isinstance(read, bytes) else await read(), headers, endpoint)
        except InvalidRequest as exc:
            return _error(reply, 400, str(exc), param=exc.param)
        try:
            check_allowed(tenant, req.adapter or req.model)
        except RouterError as exc:
            return _router_error(reply, exc)
        if not self.balancer.known_model(req.model):
            msg = f"The model `{req.model}` does not exist; see GET /v1/models"
            _error(reply, 404, msg, "NotFoundError", "model")
        else:
            await self._write(reply, req, tenant)
        request_done(self.balancer, req.adapter or req.model, "http", str(reply.status))

    async def _write(self, reply: Reply, req: RelayRequest, tenant: Tenant) -> None:
        """Relay ``req`` and write the replica's bytes: one JSON body, or SSE events as they come.

        A stream request gets a sink before it starts (``SseSink``, ``reply.prepare``): the balancer may then
        write the whole stream to the client's socket itself, the response's head with its first bytes
        (cluster/router/attempt.py); a first chunk it leaves to :class:`_Writer` (an error, a JSON answer) is
        written there, as is every chunk without a sink (the aiohttp front's stream once its headers are out).
        """
        req.sink = reply.prepare() if req.stream else None
        out = _Writer(reply, req)
        # reply.status: nonzero once the answer is given, or its head is out (by reply.start, or by the pump).
        try:
            await self.gate.relay(tenant, req, self.config.request_timeout_s, out.emit)
        except RouterError as exc:
            if not reply.status:
                return _router_error(reply, exc)
            status, etype = _HTTP_STATUS.get(exc.code, (500, "internal_error"))
            err = {"error": {"message": exc.message, "type": etype, "param": None, "code": status}}
            await reply.write(b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n")
        if out.body is not None:  # a whole JSON body (answer or error), answered once the stream ended
            return reply.answer(*out.body, charset=False)
        if not reply.status:  # a stream with no chunk at all
            return _error(reply, 502, "the replica ended the request without an answer", "internal_error")
        await reply.end()


class _Writer:
    """What the HTTP front does with each chunk the balancer emits (its ``emit``)."""

    __slots__ = ("body", "reply", "req")

    def __init__(self, reply: Reply, req: RelayRequest) -> None:
        self.reply, self.req = reply, req
        #: A whole JSON body (status, bytes) to answer with once the stream ends; None: none came.
        self.body: tuple[int, bytes] | None = None

    async def emit(self, c: replica_pb2.OpenAIChunk) -> None:
        if not c.data or self.body is not None:  # no bytes (a finish reason alone), or after a whole body
            return
        reply = self.reply
        if reply.status:
            return await reply.write(c.data)
        self.req.sink = None  # the first bytes are written here, not by a pump
        if not c.data.startswith(b"data:"):
            self.body = (c.status or 200, c.data)
            return
        # Headers go out with the first bytes, so an error before
        # them (no replica, a refusal) still gets a proper status.
        self.req.sink = await reply.start(c.status or 200, c.data)


def _error(
    reply: Reply,
    status: int,
    message: str,
    etype: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    reply.answer(status, error_body(status, message, etype, param), headers=headers)


def _router_error(reply: Reply, exc: RouterError) -> None:
    status, etype = _HTTP_STATUS.get(exc.code, (500, "internal_error"))
    headers = None
    if isinstance(exc, Refused):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="llm-cluster"'}
    _error(reply, status, exc.message, etype, headers=headers)


class _FastSite(web.TCPSite):
    """aiohttp's TCP site, with :class:`FastFront` in front of aiohttp's own protocol on every connection."""

    def __init__(self, front: OpenAIServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._front = front
        self._conns: set[FastFront] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server, front, conns = self._runner.server, self._front, self._conns
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FastFront(front, server, conns),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._sweeper = asyncio.get_running_loop().create_task(sweep_idle(conns))

    async def stop(self) -> None:
        """Stop accepting; let the fast path's requests in flight finish (up to the runner's shutdown timeout, as
        aiohttp lets its own), closing each connection once idle; then aiohttp's own shutdown."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        end = asyncio.get_running_loop().time() + self._runner._shutdown_timeout  # type: ignore[attr-defined]
        while True:
            busy = [c for c in self._conns if c.busy()]
            for c in self._conns:
                if not c.busy() and c.transport is not None:
                    c.transport.close()
            if not busy or asyncio.get_running_loop().time() >= end:
                break
            await asyncio.sleep(0.05)
        for c in list(self._conns):
            if c.transport is not None:
                c.transport.close()
        await super().stop()


async def start_http_server(server: OpenAIServer, host: str, port: int, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """``reuse_port``: share ``port`` with the other router workers on this node (SO_REUSEPORT)."""
    runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    ssl = http_ssl_context(server.config.tls)
    site = _FastSite(server, runner, host, port, reuse_address=True, reuse_port=reuse_port or None, ssl_context=ssl)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # type: ignore[union-attr]
    return runner, bound
