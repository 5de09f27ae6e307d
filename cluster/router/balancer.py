"""The balancer: one request's trip from a front end to a replica and back.

Both front ends (gRPC and HTTP) call :meth:`Balancer.generate` with a validated
request.  It waits (bounded) for a ready replica of the model, asks the policy
for one, relays the replica's stream, and keeps the router's own in-flight
count per replica exact (the signal power-of-two and later policies use).

A replica that fails before the first token (connection refused, draining,
died) is not the client's problem: the request is retried on another replica,
up to ``max_attempts`` with a short jittered backoff.  So is one that sends no
first token within ``first_token_timeout_s`` (a hung replica): the attempt is
cancelled and the request moves on, and each request relays on its own task,
so a hung replica never delays requests routed elsewhere.  Failed attempts
feed the circuit breaker (cluster.router.circuit), which ejects a replica
that keeps failing and probes it back later.  After the first token a
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
from cluster.router import metrics
from cluster.router.circuit import CircuitBreaker
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
        first_token_timeout_s: float = 60.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.replicas = replicas
        self.policy = policy
        self.no_replica_wait_s = no_replica_wait_s
        self.max_attempts = max_attempts
        self.first_token_timeout_s = first_token_timeout_s
        self.breaker = breaker or CircuitBreaker()
        self.in_flight = 0

    def known_model(self, model: str) -> bool:
        return model in self.replicas.models

    def _candidates(self, model: str, found: list[ReplicaHandle], tried: list[ReplicaHandle]) -> list[ReplicaHandle]:
        group = self.replicas.groups.get(model)
        if group is not None and group.ejected_until > time.monotonic():
            # Some replica is ejected (rare): filter; if all are, use them all
            # rather than fail (a half-open probe is better than no answer).
            found = [c for c in found if c.routable] or found
        if tried:
            found = [c for c in found if c not in tried] or found
        return found

    async def generate(self, req: ValidRequest, timeout_s: float | None = None) -> AsyncIterator[replica_pb2.ReplicaChunk]:
        if not self.known_model(req.model):
            raise RouterError(grpc.StatusCode.NOT_FOUND, f"model {req.model!r} not found; see ListModels / GET /v1/models")
        deadline = time.monotonic() + timeout_s if timeout_s else None
        rreq = to_replica_request(req)
        route = RouteRequest(model=req.model, request_id=req.request_id, prompt=req.routing_text, session_id=req.session_id)
        tried: list[ReplicaHandle] = []
        last_error = ""
        self.in_flight += 1
        try:
            for attempt in range(self.max_attempts):
                found = await self.replicas.wait_for_replicas(req.model, self.no_replica_wait_s if attempt == 0 else 0.0)
                candidates = self._candidates(req.model, found, tried)
                if not candidates:
                    raise RouterError(grpc.StatusCode.UNAVAILABLE, f"no ready replica for model {req.model!r}")
                route.attempt = attempt
                replica = self.policy.choose(candidates, route)
                metrics.ROUTING_DECISIONS.labels(req.model, self.policy.name, route.outcome).inc()
                tried.append(replica)
                started = False
                replica.begin()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    replica.end()
                    raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a replica answered")
                call = replica.stub.Generate(rreq, timeout=left)
                try:
                    stream = call.__aiter__()
                    # A replica that sends nothing (hung engine, stuck queue) is
                    # given up on after first_token_timeout_s; other requests
                    # never wait on it, since each relays on its own task.
                    first_wait = self.first_token_timeout_s if left is None else min(left, self.first_token_timeout_s)
                    try:
                        first = await asyncio.wait_for(stream.__anext__(), first_wait)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        if left is not None and first_wait >= left:
                            raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
                        self.breaker.failure(replica)
                        last_error = f"no first token within {self.first_token_timeout_s:g}s"
                        metrics.RETRIES.labels(req.model, "first_token_timeout").inc()
                        log.warning(
                            "replica sent no first token in time; retrying",
                            extra={"replica": replica.replica_id, "request_id": req.request_id, "attempt": attempt + 1},
                        )
                        continue
                    started = True
                    self.breaker.success(replica)
                    yield first
                    async for chunk in stream:
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
                    self.breaker.failure(replica)
                    last_error = f"{code.name}: {exc.details()}"
                    metrics.RETRIES.labels(req.model, code.name.lower()).inc()
                    log.warning(
                        "replica failed before first token; retrying",
                        extra={"replica": replica.replica_id, "request_id": req.request_id, "error": last_error, "attempt": attempt + 1},
                    )
                    await asyncio.sleep(random.uniform(0.005, 0.02) * (2**attempt))
                finally:
                    replica.end()
                    if not call.done():
                        call.cancel()
            raise RouterError(grpc.StatusCode.UNAVAILABLE, f"all {self.max_attempts} attempts failed; last: {last_error}")
        finally:
            self.in_flight -= 1
