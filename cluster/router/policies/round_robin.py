"""Round robin.

Spec: the i-th request for a model goes to candidate ``i mod n`` (one counter
per model).  Ignores load entirely: fair when requests cost the same, blind to
a slow or saturated replica — the baseline the other policies are measured
against.  When the candidate list changes (scale, failures), the rotation
continues from the counter, so no replica is skipped twice in a row.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.signals import R


class RoundRobin(RoutingPolicy):
    name = "round_robin"

    def __init__(self, rng: random.Random | None = None) -> None:  # deterministic: no RNG needed
        self._next: dict[str, int] = {}

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        i = self._next.get(request.model, 0)
        self._next[request.model] = i + 1
        return candidates[i % len(candidates)]
