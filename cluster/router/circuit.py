"""Circuit breaker per replica: eject a replica that fails repeatedly, probe it back.

Spec: every attempt on a replica ends in ``success`` (a first token arrived)
or ``failure`` (an error before the first token, or no first token within
``router.first_token_timeout_s``).  ``failures`` consecutive failures eject
the replica for ``eject_s``: it stays in the endpoint set (the controller
decides membership) but gets no new request.  When the time is up the replica
is half-open: it takes requests again, and its first result decides — a
success closes the circuit (counters reset), a failure ejects it again for
twice as long (up to ``max_eject_s``).

Why: the controller's health checks take seconds to replace a broken
replica; meanwhile every request routed there would pay a failed attempt and
a retry.  Ejection is per router, cheap, and undone by the first success.
"""

from __future__ import annotations

import logging
import time

from cluster.config import CircuitBreakerConfig
from cluster.router import metrics
from cluster.router.replicas import ReplicaHandle

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, config: CircuitBreakerConfig | None = None) -> None:
        self.config = config or CircuitBreakerConfig()

    def success(self, h: ReplicaHandle) -> None:
        if h.failures or h.ejections:
            if h.ejections:
                log.info("replica back in rotation", extra={"replica": h.replica_id})
            h.failures = 0
            h.ejections = 0

    def failure(self, h: ReplicaHandle) -> None:
        h.failures += 1
        half_open = h.ejections > 0 and h.ejected_until <= time.monotonic()
        if h.failures >= self.config.failures or half_open:
            c = self.config
            length = min(c.max_eject_s, c.eject_s * 2**h.ejections)
            h.ejected_until = time.monotonic() + length
            h.group.ejected_until = max(h.group.ejected_until, h.ejected_until)
            h.ejections += 1
            h.failures = 0
            metrics.ROUTING_DECISIONS.labels(h.model, "circuit_breaker", "eject").inc()
            log.warning("replica ejected", extra={"replica": h.replica_id, "eject_s": length, "ejections": h.ejections})
