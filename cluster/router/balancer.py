"""The balancer: one request's trip from a front end to a replica and back.

Both front ends (gRPC and HTTP) call :meth:`Balancer.relay` with a
:class:`RelayRequest` (the client's OpenAI body and the few fields the router
read from it) and ``emit``, what they do with each chunk (a coroutine: the
layers are plain calls, no async generator between them).  It waits (bounded) for a ready replica of the model, asks the
policy for one, relays the replica's chunks (bytes already encoded for the
client, see replica.proto), and keeps the router's own in-flight count per
replica exact (the signal power-of-two and later policies use).

A request the engine refuses (a 4xx chunk: bad field, bad template, too long)
is the client's answer, relayed as it is: no retry, and the replica counts as
healthy.  A 5xx first chunk is a replica failure.

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
migrated.  The balancer remembers the token ids it has relayed (each chunk
names them), and asks another replica to continue from the prompt plus those
tokens (``OpenAIRequest.resume``); that engine appends them to the prompt,
reduces ``max_tokens`` by their count and emits only what comes after (no
second role chunk, the same response id, usage for the whole request), so the
client sees one continuous stream.  With temperature 0 the continuation is the
one the failed replica would have produced.  At most ``max_migrations``
migrations per request; past that, or when no other replica is ready, the
stream ends with UNAVAILABLE naming the cause.  A stream whose chunks say
they cannot be resumed exactly (a tool call or a parser at work, n > 1,
structured output...) ends that way at once: never a truncated answer
presented as complete.

The text relayed so far goes along (``resume.text``): an engine holds back
the last characters that could begin a stop string, so the failed replica
may have produced more text than the client got, and the resuming engine
sends that difference first.

One attempt's relay (the first-token wait, emitting or pumping the chunks, the
stall watch) is cluster/router/attempt.py; the decisions are here.

A stream that gets no token for ``stall_timeout_s`` after its first one (hung
engine, frozen process, a partition that drops packets without a reset) is
treated like a failed replica and migrated; one watchdog per stream
(``cluster/router/stall.py``) watches for it, not a timer per token.

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

import grpc

from cluster.config import PolicyOptions
from cluster.proto import replica_pb2
from cluster.router.attempt import Attempts, Emit, Failed, RelayState
from cluster.router.circuit import CircuitBreaker
from cluster.router.errors import RouterError as RouterError
from cluster.router.metrics import RouterMetrics
from cluster.router.policies import RouteRequest, RoutingPolicy, make_policy
from cluster.router.replicas import ReplicaHandle, ReplicaSet
from cluster.router.validation import RelayRequest

log = logging.getLogger(__name__)

_ENDPOINTS = {
    "chat": replica_pb2.CHAT,
    "completions": replica_pb2.COMPLETIONS,
    "tokenize": replica_pb2.TOKENIZE,
    "detokenize": replica_pb2.DETOKENIZE,
    "embeddings": replica_pb2.EMBEDDINGS,
}


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
        #: One attempt's relay (cluster/router/attempt.py), with this balancer's limits, breaker and metrics.
        self.attempts = Attempts(self.breaker, metrics, first_token_timeout_s, stall_timeout_s)
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

    async def relay(self, req: RelayRequest, timeout_s: float | None, emit: Emit) -> None:
        """Relay ``req`` to a replica of its model, each chunk the attempt does not pump to ``emit``; raises
        :class:`RouterError` when it cannot be served (no replica, attempts used up, a stream that cannot move)."""
        if req.model not in self.replicas.models:
            msg = f"The model `{req.model}` does not exist; see ListModels / GET /v1/models"
            raise RouterError(grpc.StatusCode.NOT_FOUND, msg)
        deadline = time.monotonic() + timeout_s if timeout_s else None
        rreq = replica_pb2.OpenAIRequest(
            request_id=req.request_id, endpoint=_ENDPOINTS[req.endpoint], body=req.encoded_body(), format=req.format
        )
        route = RouteRequest(
            model=req.model, request_id=req.request_id, prompt=req.routing_text, session_id=req.session_id, adapter=req.adapter
        )
        policy = self.policy_for(req.routing_policy)
        tried: list[ReplicaHandle] = []
        relay = RelayState(req)
        retries = migrations = 0
        self.in_flight += 1
        in_flight = self.metrics.in_flight.labels(req.model)
        in_flight.value += 1  # a gauge's child is a plain number (metric_families.Value): no call per request
        try:
            while True:
                replica = await self._choose(req, route, policy, tried, relay)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before a replica answered")
                if len(tried) > 1:
                    # The replica's own id per attempt: a failed attempt may
                    # still be held there for a moment (its abort races us).
                    rreq.request_id = f"{req.request_id}.{len(tried) - 1}"
                if relay.sent_ids:
                    rreq.resume.token_ids[:] = relay.sent_ids
                    rreq.resume.text = "".join(relay.sent_text)
                try:
                    # Latency metrics by the name the client asked for: an adapter's apart from its base model's.
                    return await self.attempts.run(replica, rreq, left, relay, req.adapter or req.model, emit)
                except Failed as failed:
                    failure, reason = failed.message, failed.reason
                if relay.sent:
                    migrations += 1
                    self._may_migrate(req, relay, migrations, failure)
                    self.migrations += 1
                    self.metrics.retries.labels(req.model, "mid_stream").inc()
                    log.warning(
                        "replica failed mid-stream; migrating the request",
                        extra={"replica": replica.replica_id, "request_id": req.request_id, "error": failure, "sent": len(relay.sent_ids)},
                    )
                    continue
                retries += 1
                if retries >= self.max_attempts:
                    raise RouterError(grpc.StatusCode.UNAVAILABLE, f"all {self.max_attempts} attempts failed; last: {failure}")
                self.metrics.retries.labels(req.model, reason).inc()
                log.warning(
                    "replica failed before first token; retrying",
                    extra={"replica": replica.replica_id, "request_id": req.request_id, "error": failure, "attempt": retries},
                )
                if reason != "first_token_timeout":
                    await asyncio.sleep(random.uniform(0.005, 0.02) * (2 ** (retries - 1)))
        finally:
            self.in_flight -= 1
            in_flight.value -= 1

    async def _choose(
        self, req: RelayRequest, route: RouteRequest, policy: RoutingPolicy, tried: list[ReplicaHandle], relay: RelayState
    ) -> ReplicaHandle:
        found = await self._wait_for_first_replica(req.model) if not tried else self.replicas.by_model.get(req.model) or []
        candidates = self._candidates(req.model, found, tried)
        if not candidates:
            why = "replica failed mid-stream, none left to resume on" if relay.sent else "no ready replica"
            raise RouterError(grpc.StatusCode.UNAVAILABLE, f"{why} (model {req.model!r})")
        route.attempt = len(tried)
        replica = policy.choose(candidates, route)
        self.metrics.routing_decisions.labels(req.model, policy.name, route.outcome).value += 1
        tried.append(replica)
        return replica

    def _may_migrate(self, req: RelayRequest, relay: RelayState, migrations: int, failure: str) -> None:
        """Raise the error that ends the stream when it cannot be resumed elsewhere."""
        if not relay.resumable or not req.stream or not relay.sent_ids:  # no token ids: nothing exact to resume from
            why = "this stream cannot be resumed exactly on another replica (a tool call or parser at work, n > 1, structured output...)"
            raise RouterError(grpc.StatusCode.UNAVAILABLE, f"replica failed mid-stream; {why}; last: {failure}")
        if migrations > self.max_migrations:
            why = f"replica failed mid-stream after {self.max_migrations} migrations; last: {failure}"
            raise RouterError(grpc.StatusCode.UNAVAILABLE, why)
