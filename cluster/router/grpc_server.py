"""The public gRPC API (inference.proto), plus grpc.health.v1 and reflection.

Inference and ListModels pass the :class:`Gate`: ``authorization: Bearer <key>``
metadata (UNAUTHENTICATED when missing or bad), then per-tenant limits and the
admission queue (RESOURCE_EXHAUSTED with ``retry-after`` trailing metadata, in
seconds).  Requests that do not parse as protobuf get INVALID_ARGUMENT, not
grpc's default INTERNAL: the handlers are registered with a deserializer that
never raises.  TLS (and client certificates) come from ``router.tls``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster.config import RouterConfig
from cluster.proto import inference_pb2, inference_pb2_grpc, replica_pb2
from cluster.router.auth import bearer
from cluster.router.balancer import Balancer, RouterError
from cluster.router.gate import Gate, Refused
from cluster.router.grpc_body import openai_body
from cluster.router.grpc_embed import embed_body, embed_response
from cluster.router.lora import check_allowed, resolve_adapter
from cluster.router.metrics import request_done
from cluster.router.validation import EMBEDDINGS, InvalidRequest, check_context, relay_request
from cluster.tls import server_credentials

log = logging.getLogger(__name__)

SESSION_METADATA_KEY = "x-session-id"
POLICY_METADATA_KEY = "x-routing-policy"
AUTH_METADATA_KEY = "authorization"


class Malformed:
    """A request body that did not parse; the handler answers INVALID_ARGUMENT."""

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(parse: object) -> object:
    def deserialize(data: bytes) -> object:
        try:
            return parse(data)  # type: ignore[operator]
        except Exception as exc:
            return Malformed(f"request is not a valid protobuf message: {type(exc).__name__}")

    return deserialize


async def _abort(context: grpc.aio.ServicerContext, exc: RouterError) -> None:
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, Refused):
        trailing = (("retry-after", str(exc.retry_after_s)),)
    await context.abort(exc.code, exc.message, trailing_metadata=trailing)


def _passthrough(data: bytes) -> bytes:
    return data


#: An engine's HTTP status -> the gRPC code a client gets.
_GRPC_CODE = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def _engine_error(c: replica_pb2.OpenAIChunk) -> RouterError:
    """An engine's error chunk (OpenAI error JSON) as the gRPC status the client gets."""
    try:
        err = json.loads(c.data).get("error") or {}
        message = str(err.get("message") or err)
        param = err.get("param")
    except (ValueError, AttributeError):
        message, param = c.data.decode(errors="replace"), None
    if param and param not in message:
        message = f"{param}: {message}"
    return RouterError(_GRPC_CODE.get(c.status, grpc.StatusCode.INTERNAL), message)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, balancer: Balancer, config: RouterConfig, gate: Gate | None = None) -> None:
        self.balancer = balancer
        self.config = config
        self.gate = gate or Gate(config, balancer)

    async def _tenant(self, context: grpc.aio.ServicerContext) -> object:
        md = dict(context.invocation_metadata() or ())
        key = md.get(AUTH_METADATA_KEY)
        try:
            return self.gate.authenticate(bearer(key) if isinstance(key, str) else None)
        except RouterError as exc:
            await _abort(context, exc)

    async def Generate(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Relay as the OpenAI request it stands for (:mod:`grpc_body`); yields serialized GenerateChunks."""
        tenant = await self._tenant(context)
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        metadata = dict(context.invocation_metadata() or ())
        session = metadata.get(SESSION_METADATA_KEY)
        policy = metadata.get(POLICY_METADATA_KEY)
        try:
            endpoint, body = openai_body(request)
            req = relay_request(
                endpoint,
                body,
                models=sorted(self.balancer.replicas.models),
                session_id=session if isinstance(session, str) else None,
                routing_policy=policy if isinstance(policy, str) else None,
                default_max_tokens=self.config.default_max_tokens,
                fmt=replica_pb2.PROTO,
            )
            reps = self.balancer.replicas
            resolve_adapter(req, reps.models, reps.adapters)
            if self.balancer.known_model(req.model):
                check_context(req, reps.max_model_len(req.model))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            check_allowed(tenant, req.adapter or req.model)
        except RouterError as exc:
            await _abort(context, exc)
        remaining = context.time_remaining()
        timeout = min(remaining, self.config.request_timeout_s) if remaining is not None else self.config.request_timeout_s
        code = "CANCELLED"  # unless the stream ends or fails below: the client went away

        async def emit(c: replica_pb2.OpenAIChunk) -> None:
            if c.status >= 300:
                raise _engine_error(c)
            if c.data:
                await context.write(c.data)

        try:
            await self.gate.relay(tenant, req, timeout, emit)  # type: ignore[arg-type]
            code = "OK"
        except RouterError as exc:
            code = exc.code.name
            await _abort(context, exc)
        finally:
            request_done(self.balancer, req.adapter or req.model, "grpc", code)

    async def Embed(self, request: inference_pb2.EmbedRequest, context: grpc.aio.ServicerContext) -> inference_pb2.EmbedResponse:
        """Relay as ``POST /v1/embeddings`` (:mod:`grpc_embed`); the replica's JSON answer becomes an EmbedResponse."""
        tenant = await self._tenant(context)
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        try:
            req = relay_request(EMBEDDINGS, embed_body(request), models=sorted(self.balancer.replicas.models))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        code, answer = "CANCELLED", b""
        try:
            check_allowed(tenant, req.model)
            parts: list[bytes] = []

            async def collect(c: replica_pb2.OpenAIChunk) -> None:
                if c.status >= 300:
                    raise _engine_error(c)
                parts.append(c.data)

            await self.gate.relay(tenant, req, self.config.request_timeout_s, collect)  # type: ignore[arg-type]
            answer = b"".join(parts)
            code = "OK"
        except RouterError as exc:
            code = exc.code.name
            await _abort(context, exc)
        finally:
            request_done(self.balancer, req.model, "grpc", code)
        return embed_response(answer)

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        await self._tenant(context)
        reps = self.balancer.replicas
        return inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.ModelInfo(
                    name=m,
                    ready_replicas=len(reps.by_model.get(m, ())),
                    max_model_len=max((h.max_model_len for h in reps.by_model.get(m, ())), default=0),
                    root=next((h.root for h in reps.by_model.get(m, ()) if h.root), m),
                    parent=next((h.parent for h in reps.by_model.get(m, ()) if h.parent), ""),
                )
                for m in sorted(reps.models)
            ]
            + [
                inference_pb2.ModelInfo(name=a, ready_replicas=len(reps.by_model.get(b, ())), root=a, parent=b)
                for a, b in sorted(reps.adapters.items())
            ]
        )


async def start_grpc_server(servicer: InferenceServicer, host: str, port: int) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", servicer.config.max_body_bytes)])
    _add_inference(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    creds = server_credentials(servicer.config.tls)
    addr = f"{host}:{port}"
    bound = server.add_secure_port(addr, creds) if creds is not None else server.add_insecure_port(addr)
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(names[0], health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer


def _add_inference(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_InferenceServicer_to_server``, with deserializers that never raise."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=_tolerant(inference_pb2.GenerateRequest.FromString),
            # The replica already serialized each GenerateChunk: bytes pass through.
            response_serializer=_passthrough,
        ),
        "Embed": grpc.unary_unary_rpc_method_handler(
            servicer.Embed,
            request_deserializer=_tolerant(inference_pb2.EmbedRequest.FromString),
            response_serializer=inference_pb2.EmbedResponse.SerializeToString,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=_tolerant(inference_pb2.ListModelsRequest.FromString),
            response_serializer=inference_pb2.ListModelsResponse.SerializeToString,
        ),
    }
    name = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
