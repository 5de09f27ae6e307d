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
that keeps failing and probes it back later.

A replica that fails *after* the first token (process killed, node lost,
connection dropped) is not the client's problem either: the request is
migrated.  The balancer remembers the token ids it has relayed, and asks
another replica to continue from the prompt plus those tokens
(``resume_token_ids``); that engine appends them to the prompt, reduces
``max_tokens`` by their count and emits only what comes after, so the client
sees one continuous stream.  With seeded sampling (or temperature 0) the
continuation is the one the failed replica would have produced.  At most
``max_migrations`` migrations per request; past that, or when no other
replica is ready, the stream ends with UNAVAILABLE naming the cause.  The last
chunk's usage is rewritten to describe the whole logical request (engines
disagree on whether resumed tokens count as prompt or completion).

The text relayed so far goes along (``resume_text``): an engine holds back
the last characters that could begin a stop string, so the failed replica
may have produced more text than the client got, and the resuming engine
sends that difference first.

A stream that gets no token for ``stall_timeout_s`` after its first one (hung
engine, frozen process, a partition that drops packets without a reset) is
treated like a failed replica and migrated.

Failure modes: a stall timeout shorter than the engine's real pauses would
migrate healthy streams (each costs a prefill of prompt + tokens so far);
see the engines for how exact a resumed stop-string check is.

When the caller goes away (client cancel, deadline), the relaying coroutine is
cancelled, which cancels the replica call, which aborts the request in the
engine.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator

import grpc

from cluster.config import PolicyOptions
from cluster.proto import replica_pb2
from cluster.router.circuit import CircuitBreaker
from cluster.router.metrics import RouterMetrics
from cluster.router.policies import RouteRequest, RoutingPolicy, make_policy
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
        max_migrations: int = 2,
        policy_options: PolicyOptions | None = None,
        max_waiting_for_replica: int = 1000,
        stall_timeout_s: float = 30.0,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.metrics = metrics = metrics or (breaker.metrics if breaker is not None else RouterMetrics())
        self.replicas = replicas
        self.policy = policy
        self.no_replica_wait_s = no_replica_wait_s
        self.max_attempts = max_attempts
        self.first_token_timeout_s = first_token_timeout_s
        self.breaker = breaker or CircuitBreaker(metrics=metrics)
        self.max_migrations = max_migrations
        self.stall_timeout_s = stall_timeout_s
        self.policy_options = policy_options
        #: Policies chosen per request (x-routing-policy), built on first use, each with its own state.
        self.policies: dict[str, RoutingPolicy] = {policy.name: self._attach(policy)}
        self.max_waiting_for_replica = max_waiting_for_replica
        self.in_flight = 0
        #: Requests now waiting for a model with no ready replica (bounded queue).
        self.waiting_for_replica = 0
        #: Streams resumed on another replica, ever (tests and status read it).
        self.migrations = 0

    def policy_for(self, name: str | None) -> RoutingPolicy:
        if name is None or name == self.policy.name:
            return self.policy
        p = self.policies.get(name)
        if p is None:
            p = self.policies[name] = self._attach(make_policy(name, self.policy_options))
        return p

    def _attach(self, policy: RoutingPolicy) -> RoutingPolicy:
        """A prefix index looks up what the replicas publish (cluster/router/policies/published.py) too."""
        index = getattr(policy, "index", None)
        published = getattr(self.replicas, "published", None)
        if index is not None and published is not None:
            index.attach(published)
        return policy

    def known_model(self, model: str) -> bool:
        return model in self.replicas.models

    async def _wait_for_first_replica(self, model: str) -> list[ReplicaHandle]:
        """The bounded queue in front of a model with no ready replica (e.g. scaled to zero).

        Waiting requests are visible as ``llm_cluster_router_waiting_for_replica``
        (the autoscaler's scale-from-zero signal); beyond ``max_waiting_for_replica``
        a request is refused at once rather than queued without bound.
        """
        candidates = self.replicas.by_model.get(model)
        if candidates:
            return candidates
        if self.waiting_for_replica >= self.max_waiting_for_replica:
            self.metrics.no_replica.labels(model, "rejected_full").inc()
            msg = f"no ready replica for model {model!r} and {self.waiting_for_replica} requests already wait for one"
            raise RouterError(grpc.StatusCode.UNAVAILABLE, msg)
        self.waiting_for_replica += 1
        gauge = self.metrics.waiting_for_replica.labels(model)
        gauge.inc()
        try:
            candidates = await self.replicas.wait_for_replicas(model, self.no_replica_wait_s)
        finally:
            self.waiting_for_replica -= 1
            gauge.dec()
        self.metrics.no_replica.labels(model, "served" if candidates else "timeout").inc()
        return candidates

    def _candidates(self, model: str, found: list[ReplicaHandle], tried: list[ReplicaHandle]) -> list[ReplicaHandle]:
        found = self.breaker.candidates(model, found)  # type: ignore[assignment]
        if tried:
            found = [c for c in found if c not in tried] or found
        return found

    async def generate(self, req: ValidRequest, timeout_s: float | None = None) -> AsyncIterator[replica_pb2.ReplicaChunk]:
        if not self.known_model(req.model):
            raise RouterError(grpc.StatusCode.NOT_FOUND, f"model {req.model!r} not found; see ListModels / GET /v1/models")
        deadline = time.monotonic() + timeout_s if timeout_s else None
        rreq = to_replica_request(req)
        route = RouteRequest(model=req.model, request_id=req.request_id, prompt=req.routing_text, session_id=req.session_id)
        policy = self.policy_for(req.routing_policy)
        tried: list[ReplicaHandle] = []
        sent_ids: list[int] = []  # token ids relayed to the client so far, over every replica
        sent_text: list[str] = []  # and their text
        retries = migrations = 0
        last_error = ""
        self.in_flight += 1
        in_flight = self.metrics.in_flight.labels(req.model)
        in_flight.inc()
        # Client-side latencies on the router's clock: one histogram observe per chunk.
        arrived = time.monotonic()
        last: float | None = None
        itl = self.metrics.itl.labels(req.model)
        try:
            while True:
                found = await self._wait_for_first_replica(req.model) if not tried else self.replicas.by_model.get(req.model) or []
                candidates = self._candidates(req.model, found, tried)
                if not candidates:
                    why = f"replica failed mid-stream, none left to resume on: {last_error}" if sent_ids else "no ready replica"
                    raise RouterError(grpc.StatusCode.UNAVAILABLE, f"{why} (model {req.model!r})")
                route.attempt = len(tried)
                replica = policy.choose(candidates, route)
                self.metrics.routing_decisions.labels(req.model, policy.name, route.outcome).inc()
                tried.append(replica)
                replica.begin()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    replica.end()
                    raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a replica answered")
                if len(tried) > 1:
                    # A fresh engine request id per attempt: the failed replica
                    # may still hold the old one for a moment (its abort races us).
                    rreq.request_id = f"{req.request_id}.{len(tried) - 1}"
                if sent_ids:
                    del rreq.resume_token_ids[:]
                    rreq.resume_token_ids.extend(sent_ids)
                    rreq.resume_text = "".join(sent_text)
                resumed = len(sent_ids)
                call = replica.stub.Generate(rreq, timeout=left)
                try:
                    stream = call.__aiter__()
                    # A replica that sends nothing (hung engine, stuck queue) is
                    # given up on after first_token_timeout_s; other requests
                    # never wait on it, since each relays on its own task.
                    first_wait = self.first_token_timeout_s if left is None else min(left, self.first_token_timeout_s)
                    try:
                        chunk = await asyncio.wait_for(stream.__anext__(), first_wait)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        if left is not None and first_wait >= left:
                            raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
                        self.breaker.failure(replica)
                        failure, reason = (
                            f"{replica.replica_id}: no first token within {self.first_token_timeout_s:g}s",
                            "first_token_timeout",
                        )
                    else:
                        self.breaker.success(replica)
                        while True:
                            if chunk.finish_reason and resumed:
                                _whole_request_usage(chunk, len(sent_ids) + len(chunk.token_ids))
                            sent_ids.extend(chunk.token_ids)
                            sent_text.append(chunk.text)
                            now = time.monotonic()
                            if last is None:
                                self.metrics.ttft.labels(req.model).observe(now - arrived)
                            else:
                                itl.observe(now - last)
                            last = now
                            yield chunk
                            try:
                                # Armed only while waiting on the replica, never
                                # while the caller holds the chunk (a slow client).
                                async with asyncio.timeout(self.stall_timeout_s):
                                    chunk = await stream.__anext__()
                            except StopAsyncIteration:
                                self.metrics.e2e.labels(req.model).observe(time.monotonic() - arrived)
                                return
                            except TimeoutError:
                                self.breaker.failure(replica)
                                reason = "stall"
                                failure = f"{replica.replica_id}: no token for {self.stall_timeout_s:g}s mid-stream"
                                break
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.INVALID_ARGUMENT:
                        raise RouterError(code, exc.details() or "invalid argument") from None
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise RouterError(code, "deadline exceeded") from None
                    if code not in _RETRYABLE:
                        raise RouterError(grpc.StatusCode.UNAVAILABLE, f"replica failed: {code.name}: {exc.details()}") from None
                    self.breaker.failure(replica)
                    failure, reason = f"{replica.replica_id}: {code.name}: {exc.details()}", code.name.lower()
                finally:
                    replica.end()
                    if not call.done():
                        call.cancel()
                last_error = failure
                if sent_ids:
                    migrations += 1
                    if migrations > self.max_migrations:
                        why = f"replica failed mid-stream after {self.max_migrations} migrations; last: {last_error}"
                        raise RouterError(grpc.StatusCode.UNAVAILABLE, why)
                    self.migrations += 1
                    self.metrics.retries.labels(req.model, "mid_stream").inc()
                    log.warning(
                        "replica failed mid-stream; migrating the request",
                        extra={"replica": replica.replica_id, "request_id": req.request_id, "error": last_error, "sent": len(sent_ids)},
                    )
                    continue
                retries += 1
                if retries >= self.max_attempts:
                    raise RouterError(grpc.StatusCode.UNAVAILABLE, f"all {self.max_attempts} attempts failed; last: {last_error}")
                self.metrics.retries.labels(req.model, reason).inc()
                log.warning(
                    "replica failed before first token; retrying",
                    extra={"replica": replica.replica_id, "request_id": req.request_id, "error": last_error, "attempt": retries},
                )
                if reason != "first_token_timeout":
                    await asyncio.sleep(random.uniform(0.005, 0.02) * (2 ** (retries - 1)))
        finally:
            self.in_flight -= 1
            in_flight.dec()


def _whole_request_usage(last: replica_pb2.ReplicaChunk, completion_tokens: int) -> None:
    """Make a resumed stream's usage describe the whole request, whatever the engine counted.

    A resuming engine sees the resumed tokens as prompt: the sim counts them in
    ``prompt_tokens``, vLLM in ``completion_tokens``.  Their sum is the same
    either way, and the router knows how many tokens it relayed.
    """
    total = last.prompt_tokens + last.completion_tokens
    last.completion_tokens = completion_tokens
    last.prompt_tokens = max(total - completion_tokens, 0)
    last.cached_prompt_tokens = min(last.cached_prompt_tokens, last.prompt_tokens)
