"""The OpenAI-compatible HTTP API, beside the gRPC API in the same process.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (SSE streaming and not, with ``usage``),
``GET /healthz`` (liveness; ``/health`` too, as vLLM), ``GET /readyz`` (200 only while a replica is
ready) and ``GET /openapi.json`` (the API's OpenAPI schema, :mod:`openapi`).
Inference and model listing pass the :class:`Gate` (API key → 401, limits /
full queue → 429 with ``Retry-After``); health and schema need no key.  Errors use OpenAI's JSON shape ``{"error": {message, type, param,
code}}`` so the official client raises its usual exceptions.  It shares the
gRPC front end's balancer and validation, so both APIs route and reject alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web

from cluster.config import RouterConfig
from cluster.proto import replica_pb2
from cluster.router.auth import bearer
from cluster.router.balancer import Balancer, RouterError
from cluster.router.gate import Gate, Refused
from cluster.router.metrics import request_done
from cluster.router.openapi import openapi_schema
from cluster.router.validation import InvalidRequest, ValidRequest, check_context, validate
from cluster.tls import http_ssl_context

log = logging.getLogger(__name__)

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
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


def _usage(c: replica_pb2.ReplicaChunk) -> dict[str, Any]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_prompt_tokens},
    }


class OpenAIServer:
    def __init__(self, balancer: Balancer, config: RouterConfig, gate: Gate | None = None) -> None:
        self.balancer = balancer
        self.config = config
        self.gate = gate or Gate(config, balancer)
        self.app = web.Application(client_max_size=config.max_body_bytes, middlewares=[self._errors])
        self.app.add_routes(
            [
                web.get("/v1/models", self.models),
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/completions", self.completions),
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
        data = [{"id": m, "object": "model", "created": now, "owned_by": "llm-cluster"} for m in sorted(self.balancer.replicas.models)]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    # ---- shared path --------------------------------------------------------
    async def _parse(self, request: web.Request, chat: bool) -> tuple[ValidRequest, dict[str, Any]]:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequest("body", "is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequest("body", "must be a JSON object")
        n = body.get("n", 1)
        if isinstance(n, bool) or n not in (1, None):
            raise InvalidRequest("n", "only n=1 is supported")
        if body.get("stream") is not None and not isinstance(body["stream"], bool):
            raise InvalidRequest("stream", "must be a boolean")
        so = body.get("stream_options")
        if so is not None and not (isinstance(so, dict) and isinstance(so.get("include_usage", False), bool)):
            raise InvalidRequest("stream_options", 'must be an object like {"include_usage": true}')
        prompt = None
        if not chat:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if prompt is None:
                raise InvalidRequest("prompt", "is required")
            if not isinstance(prompt, str):
                raise InvalidRequest("prompt", "must be a string (or a list of one string)")
        elif "messages" not in body:
            raise InvalidRequest("messages", "is required")
        user = body.get("user")
        session = request.headers.get("x-session-id") or (user if isinstance(user, str) else None)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        req = validate(
            model=body.get("model"),
            prompt=prompt,
            messages=body.get("messages") if chat else None,
            max_tokens=max_tokens,
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            top_k=body.get("top_k"),
            seed=body.get("seed"),
            stop=body.get("stop"),
            request_id=request.headers.get("x-request-id"),
            session_id=session,
            default_max_tokens=self.config.default_max_tokens,
            routing_policy=request.headers.get("x-routing-policy"),
        )
        return req, body

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        # Authenticate before reading the body: a caller without a key learns nothing else.
        try:
            tenant = self.gate.authenticate(bearer(request.headers.get("Authorization")))
        except RouterError as exc:
            return _router_error(exc)
        try:
            req, body = await self._parse(request, chat)
            if self.balancer.known_model(req.model):
                check_context(req, self.balancer.replicas.max_model_len(req.model))
        except InvalidRequest as exc:
            return error_response(400, str(exc), param=exc.param)
        resp = await self._complete_valid(tenant, req, body, request, chat)
        request_done(self.balancer, req.model, "http", str(resp.status))
        return resp

    async def _complete_valid(
        self, tenant: Any, req: ValidRequest, body: dict[str, Any], request: web.Request, chat: bool
    ) -> web.StreamResponse:
        if not self.balancer.known_model(req.model):
            return error_response(404, f"model {req.model!r} not found; see GET /v1/models", "not_found_error", "model")
        stream = self.gate.generate(tenant, req, self.config.request_timeout_s)
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + req.request_id
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._sse(request, stream, chat, rid, req.model, created, include_usage)
        return await self._unary(stream, chat, rid, req.model, created)

    async def _unary(self, stream: AsyncIterator[replica_pb2.ReplicaChunk], chat: bool, rid: str, model: str, created: int) -> web.Response:
        parts: list[str] = []
        last: replica_pb2.ReplicaChunk | None = None
        try:
            async with contextlib.aclosing(stream) as s:
                async for c in s:
                    parts.append(c.text)
                    last = c
        except RouterError as exc:
            return _router_error(exc)
        text = "".join(parts)
        finish = last.finish_reason if last is not None else "abort"
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        body = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _usage(last) if last is not None else None,
        }
        return web.json_response(body)

    async def _sse(
        self,
        request: web.Request,
        stream: AsyncIterator[replica_pb2.ReplicaChunk],
        chat: bool,
        rid: str,
        model: str,
        created: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": rid, "object": obj, "created": created, "model": model}
        resp: web.StreamResponse | None = None
        first = True
        try:
            async with contextlib.aclosing(stream) as s:
                async for c in s:
                    if resp is None:
                        # Headers go out with the first token, so an error before
                        # it (no replica, bad prompt) still gets a proper status.
                        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                        await resp.prepare(request)
                    finish = c.finish_reason or None
                    if chat:
                        delta: dict[str, Any] = {"content": c.text}
                        if first:
                            delta["role"] = "assistant"
                        choice = {"index": 0, "delta": delta, "finish_reason": finish}
                    else:
                        choice = {"index": 0, "text": c.text, "finish_reason": finish, "logprobs": None}
                    first = False
                    payload = {**head, "choices": [choice]}
                    if include_usage:
                        payload["usage"] = None
                    await resp.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                    if finish and include_usage:
                        await resp.write(b"data: " + json.dumps({**head, "choices": [], "usage": _usage(c)}).encode() + b"\n\n")
        except RouterError as exc:
            if resp is None:
                return _router_error(exc)
            status, etype = _HTTP_STATUS.get(exc.code, (500, "internal_error"))
            err = {"error": {"message": exc.message, "type": etype, "param": None, "code": status}}
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        if resp is None:  # a stream with no chunk at all
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def start_http_server(server: OpenAIServer, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=http_ssl_context(server.config.tls))
    await site.start()
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # type: ignore[union-attr]
    return runner, bound
