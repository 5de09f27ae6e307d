"""Circuit breaker per replica: eject a replica that fails repeatedly, probe it back.

Spec: every attempt on a replica ends in ``success`` (a first token arrived)
or ``failure`` (an error before the first token, or no first token within
``router.first_token_timeout_s``).  ``failures`` consecutive failures eject
the replica for ``eject_s``: it stays in the endpoint set (the controller
decides membership) but gets no new request.  When the time is up the replica
is half-open: it takes requests again, and its first result decides — a
success closes the circuit (counters reset), a failure ejects it again for
twice as long (up to ``max_eject_s``).

The breaker owns this state: one :class:`Circuit` per replica (the handle
carries it, so reading it is O(1), but only the breaker changes it) and, per
model, until when some replica is ejected, so :meth:`CircuitBreaker.candidates`
filters only while one is (rare) and costs nothing otherwise.  Ejections are
counted in ``llm_cluster_router_circuit_ejections_total``.

Why: the controller's health checks take seconds to replace a broken
replica; meanwhile every request routed there would pay a failed attempt and
a retry.  Ejection is per router, cheap, and undone by the first success.
Failure mode: per router (and per worker): each one learns of a broken
replica from its own failed attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cluster.config import CircuitBreakerConfig
from cluster.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Circuit:
    """One replica's breaker state (written only by :class:`CircuitBreaker`)."""

    failures: int = 0
    ejections: int = 0
    #: While time.monotonic() < this the circuit is open: no new request.
    open_until: float = 0.0


class _Breakable(Protocol):
    @property
    def replica_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def circuit(self) -> Circuit: ...


H = TypeVar("H", bound=_Breakable)


class CircuitBreaker:
    def __init__(self, config: CircuitBreakerConfig | None = None, metrics: RouterMetrics | None = None) -> None:
        self.config = config or CircuitBreakerConfig()
        self.metrics = metrics or RouterMetrics()
        #: Per model: until when some replica's circuit is open.
        self._open_until: dict[str, float] = {}

    def candidates(self, model: str, found: Sequence[H]) -> Sequence[H]:
        """``found`` minus the ejected replicas; all of them if every one is ejected (a probe beats no answer)."""
        if self._open_until.get(model, 0.0) <= time.monotonic():
            return found
        now = time.monotonic()
        return [h for h in found if h.circuit.open_until <= now] or found

    def is_open(self, h: _Breakable) -> bool:
        return h.circuit.open_until > time.monotonic()

    def success(self, h: _Breakable) -> None:
        c = h.circuit
        if c.failures or c.ejections:
            if c.ejections:
                log.info("replica back in rotation", extra={"replica": h.replica_id})
            c.failures = 0
            c.ejections = 0

    def failure(self, h: _Breakable) -> None:
        c = h.circuit
        c.failures += 1
        now = time.monotonic()
        half_open = c.ejections > 0 and c.open_until <= now
        if c.failures >= self.config.failures or half_open:
            cfg = self.config
            length = min(cfg.max_eject_s, cfg.eject_s * 2**c.ejections)
            c.open_until = now + length
            self._open_until[h.model] = max(self._open_until.get(h.model, 0.0), c.open_until)
            c.ejections += 1
            c.failures = 0
            self.metrics.circuit_ejections.labels(h.model).inc()
            log.warning("replica ejected", extra={"replica": h.replica_id, "eject_s": length, "ejections": c.ejections})
