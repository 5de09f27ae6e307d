"""Power of two choices on in-flight requests.

Spec: sample two distinct candidates uniformly at random; send the request to
the one with fewer requests in flight from this router (ties: the one whose
last load report shows fewer waiting requests, then either).  With one
candidate, pick it.

Why: choosing the less loaded of two random replicas keeps the maximum load
exponentially closer to the mean than random choice (Mitzenmacher), at O(1)
cost and without the herding that "always pick the global minimum" causes when
several routers act on the same stale view.  Failure mode: in-flight counts are
per router, so with many routers each sees only its own share of the load.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.replicas import ReplicaHandle


def _waiting(h: ReplicaHandle) -> int:
    return h.load.waiting if h.load is not None and not h.load_stale else 0


class PowerOfTwo(RoutingPolicy):
    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[ReplicaHandle], request: RouteRequest) -> ReplicaHandle:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return min((a, b), key=lambda h: (h.in_flight, _waiting(h)))
