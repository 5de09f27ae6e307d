"""The router's gate: authentication, per-tenant limits and the admission queue, in that order.

Both front ends call the gate, so the two APIs authenticate, limit and refuse
alike:

1. :meth:`Gate.authenticate` maps the presented key to a tenant (HTTP 401 /
   UNAUTHENTICATED when missing or unknown).  With ``router.auth.enabled``
   off, every request belongs to the one ``anonymous`` tenant.
2. :meth:`Gate.relay` charges the tenant's limits (:mod:`limits`), then
   waits in the model's weighted-fair admission queue (:mod:`admission`) for
   one of its slots (the model's ready replicas x
   ``max_concurrent_per_replica``; one queue per model, so a flood on one
   model never holds back another), then has the balancer relay the stream.  A limit, a full queue or a queue deadline
   raises :class:`Refused` at once (HTTP 429 + ``Retry-After`` /
   RESOURCE_EXHAUSTED with ``retry-after`` trailing metadata), before any
   byte of the answer, so the front ends can still send a proper status.
3. When the stream ends (finished, failed, or the client left), the queue
   slot is released and the tenant's token charge is reconciled with the real
   usage (the final chunk's prompt + completion tokens; for a stream cut off
   early, the prompt estimate plus the tokens already sent).

Failure modes: a key file that becomes invalid keeps the previous keys
(:class:`KeyStore`); refusals never wait; every exit path releases what it
took, which :meth:`Gate.leaks` checks (the soak test asserts it is empty).
"""

from __future__ import annotations

import logging
import time

import grpc

from cluster.config import ConfigError, RouterConfig
from cluster.router.admission import AdmissionQueue, AdmissionRefused, QueueFull
from cluster.router.attempt import Emit
from cluster.router.auth import ANONYMOUS, AuthError, KeyStore, Tenant
from cluster.router.balancer import Balancer, RouterError
from cluster.router.limits import Grant, Limiter, LimitExceeded, estimate_tokens
from cluster.router.validation import RelayRequest

log = logging.getLogger(__name__)


class Refused(RouterError):
    """A request refused for capacity or quota: 429 / RESOURCE_EXHAUSTED, with a retry hint."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        self.retry_after_s = retry_after_s


class Unauthenticated(RouterError):
    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, message)


class Gate:
    def __init__(self, config: RouterConfig, balancer: Balancer) -> None:
        self.config = config
        self.balancer = balancer
        auth = config.auth
        self.keys: KeyStore | None = None
        if auth.enabled and auth.key_file:
            try:
                self.keys = KeyStore(auth.key_file)
            except ValueError as exc:  # unreadable or invalid at start: refuse to start, naming the field
                raise ConfigError(f"config field 'router.auth.key_file': {exc}") from None
        self.metrics = balancer.metrics
        self.anonymous = Tenant(ANONYMOUS, auth.anonymous)
        self.limiter = Limiter()
        #: One admission queue per model (models are known before a request gets here).
        self.queues: dict[str, AdmissionQueue] = {}
        self.refused = 0
        self.admitted = 0

    def queue(self, model: str) -> AdmissionQueue:
        q = self.queues.get(model)
        if q is None:
            adm = self.config.admission
            q = self.queues[model] = AdmissionQueue(lambda: self._capacity(model), adm.max_queue, dict(adm.weights))
        return q

    def _capacity(self, model: str) -> int:
        # With no ready replica the balancer's own bounded wait answers 503; the
        # gate lets one replica's worth through so that path is reached.
        ready = len(self.balancer.replicas.by_model.get(model, ()))
        return max(ready, 1) * self.config.admission.max_concurrent_per_replica

    def start(self) -> None:
        if self.keys is not None:
            self.keys.start_watching(self.config.auth.reload_interval_s)

    def stop(self) -> None:
        if self.keys is not None:
            self.keys.stop_watching()

    def capacity_changed(self) -> None:
        """The replica set changed: admit waiters that now fit."""
        for q in self.queues.values():
            q.dispatch()

    def authenticate(self, key: str | None) -> Tenant:
        if self.keys is None:
            return self.anonymous
        try:
            return self.keys.authenticate(key)
        except AuthError as exc:
            self.metrics.refused.labels("", "unauthenticated").inc()
            raise Unauthenticated(str(exc)) from None

    async def relay(self, tenant: Tenant, req: RelayRequest, timeout_s: float, emit: Emit) -> None:
        """Admit ``req`` for ``tenant`` and relay its stream (``emit``: :meth:`Balancer.relay`'s); raises
        :class:`Refused` before the first chunk."""
        started = time.monotonic()
        est_prompt = req.prompt_chars // 4
        try:
            grant = self.limiter.acquire(tenant, estimate_tokens(req.prompt_chars, req.max_tokens))
        except LimitExceeded as exc:
            self.refused += 1
            self.metrics.refused.labels(tenant.name, exc.limit).inc()
            raise Refused(str(exc), exc.retry_after_s) from None
        queue = self.queue(req.model)
        cost = float(req.max_tokens + est_prompt)
        if not queue.try_admit(tenant.name, tenant.spec.priority, cost):
            await self._wait(tenant, req, queue, grant, cost, timeout_s)
        self.admitted += 1
        in_flight = self.metrics.tenant_in_flight.labels(tenant.name)
        in_flight.value += 1  # a gauge's child is a plain number (metric_families.Value): no call per request
        try:
            left = timeout_s - (time.monotonic() - started)
            await self.balancer.relay(req, max(left, 0.001), emit)
        finally:
            in_flight.value -= 1
            queue.release()
            # The balancer counted what it relayed (req.note), also what it wrote to the client itself.
            used = req.tokens_used
            self.limiter.release(grant, used if used is not None else est_prompt + req.tokens_sent)

    async def _wait(self, tenant: Tenant, req: RelayRequest, queue: AdmissionQueue, grant: Grant, cost: float, timeout_s: float) -> None:
        """Wait in the model's admission queue (counted in its depth gauge); a refusal gives the grant back."""
        depth = self.metrics.queue_depth.labels(req.model)
        depth.inc()
        try:
            wait = min(self.config.admission.queue_timeout_s, timeout_s)
            await queue.admit(tenant.name, tenant.spec.priority, cost=cost, timeout_s=wait)
        except AdmissionRefused as exc:
            self.limiter.release(grant, used_tokens=0, refund_request=True)
            self.refused += 1
            self.metrics.refused.labels(tenant.name, "queue_full" if isinstance(exc, QueueFull) else "queue_timeout").inc()
            raise Refused(str(exc), exc.retry_after_s) from None
        except BaseException:
            self.limiter.release(grant, used_tokens=0, refund_request=True)
            raise
        finally:
            depth.dec()

    def held(self) -> dict[str, int]:
        """Requests each layer holds now (exported as ``llm_cluster_router_held_requests``); all zero when idle."""
        return {
            "admission_in_flight": sum(q.in_flight for q in self.queues.values()),
            "admission_waiting": sum(q.depth() for q in self.queues.values()),
            "limiter_in_flight": self.limiter.total_in_flight(),
            "balancer_in_flight": self.balancer.in_flight,
            "replica_handles_in_flight": sum(h.in_flight for h in self.balancer.replicas.by_id.values()),
        }

    def leaks(self) -> dict[str, int]:
        """What is still held; empty when no request is in flight."""
        return {k: v for k, v in self.held().items() if v}
