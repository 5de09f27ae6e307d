"""The balancer: one request's trip from a front end to a replica and back.

Both front ends (gRPC and HTTP) call :meth:`Balancer.generate` with a validated
request.  It waits (bounded) for a ready replica of the model, asks the policy
for one, relays the replica's stream, and keeps the router's own in-flight
count per replica exact (the signal power-of-two and later policies use).

A replica that fails before the first token (connection refused, draining,
died) is not the client's problem: the request is retried on another replica,
up to ``max_attempts`` with a short jittered backoff.  After the first token a
failure ends the stream with UNAVAILABLE.  When the caller goes away (client
cancel, deadline), the relaying coroutine is cancelled, which cancels the
replica call, which aborts the request in the engine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc

from cluster.proto import replica_pb2
from cluster.router.policies import RouteRequest, RoutingPolicy
from cluster.router.replicas import ReplicaHandle, ReplicaSet
from cluster.router.validation import ValidRequest

log = logging.getLogger(__name__)

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED}


class RouterError(Exception):
    """An error with a gRPC status code; the HTTP front end maps it to a status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def to_replica_request(req: ValidRequest) -> replica_pb2.ReplicaGenerateRequest:
    sampling = replica_pb2.ReplicaSampling(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop=req.stop,
    )
    if req.seed is not None:
        sampling.seed = req.seed
    out = replica_pb2.ReplicaGenerateRequest(request_id=req.request_id, sampling=sampling)
    if req.messages is not None:
        out.chat.messages.extend(replica_pb2.ReplicaMessage(role=m.role, content=m.content) for m in req.messages)
    else:
        out.prompt = req.prompt or ""
    return out


class Balancer:
    def __init__(
        self,
        replicas: ReplicaSet,
        policy: RoutingPolicy,
        *,
        no_replica_wait_s: float = 5.0,
        max_attempts: int = 3,
    ) -> None:
        self.replicas = replicas
        self.policy = policy
        self.no_replica_wait_s = no_replica_wait_s
        self.max_attempts = max_attempts
        self.in_flight = 0

    def known_model(self, model: str) -> bool:
        return model in self.replicas.models

    async def generate(self, req: ValidRequest, timeout_s: float | None = None) -> AsyncIterator[replica_pb2.ReplicaChunk]:
        if not self.known_model(req.model):
            raise RouterError(grpc.StatusCode.NOT_FOUND, f"model {req.model!r} not found; see ListModels / GET /v1/models")
        deadline = time.monotonic() + timeout_s if timeout_s else None
        rreq = to_replica_request(req)
        route = RouteRequest(model=req.model, request_id=req.request_id, session_id=req.session_id)
        tried: list[ReplicaHandle] = []
        last_error = ""
        self.in_flight += 1
        try:
            for attempt in range(self.max_attempts):
                candidates = await self.replicas.wait_for_replicas(req.model, self.no_replica_wait_s if attempt == 0 else 0.0)
                if tried:
                    candidates = [c for c in candidates if c not in tried] or candidates
                if not candidates:
                    raise RouterError(grpc.StatusCode.UNAVAILABLE, f"no ready replica for model {req.model!r}")
                replica = self.policy.choose(candidates, route)
                tried.append(replica)
                started = False
                replica.in_flight += 1
                replica.routed += 1
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a replica answered")
                call = replica.stub.Generate(rreq, timeout=left)
                try:
                    async for chunk in call:
                        started = True
                        yield chunk
                    return
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.INVALID_ARGUMENT:
                        raise RouterError(code, exc.details() or "invalid argument") from None
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise RouterError(code, "deadline exceeded") from None
                    if started or code not in _RETRYABLE:
                        raise RouterError(grpc.StatusCode.UNAVAILABLE, f"replica failed mid-stream: {exc.details()}") from None
                    last_error = f"{code.name}: {exc.details()}"
                    log.warning(
                        "replica failed before first token; retrying",
                        extra={"replica": replica.replica_id, "request_id": req.request_id, "error": last_error, "attempt": attempt + 1},
                    )
                    await asyncio.sleep(random.uniform(0.005, 0.02) * (2**attempt))
                finally:
                    replica.in_flight -= 1
                    if not call.done():
                        call.cancel()
            raise RouterError(grpc.StatusCode.UNAVAILABLE, f"all {self.max_attempts} attempts failed; last: {last_error}")
        finally:
            self.in_flight -= 1
