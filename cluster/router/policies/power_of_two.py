"""Power of two choices on in-flight requests.

Spec: sample two distinct candidates uniformly at random; send the request to
the one that is fresh and routable (a load report within ``STALE_AFTER_S``,
circuit not open) before one that is not, then to the one with fewer requests
in flight from this router (ties: the one whose last load report shows fewer
waiting requests, then either).  With one candidate, pick it.

Why: choosing the less loaded of two random replicas keeps the maximum load
exponentially closer to the mean than random choice (Mitzenmacher), at O(1)
cost and without the herding that "always pick the global minimum" causes when
several routers act on the same stale view.  Failure mode: in-flight counts are
per router, so with many routers each sees only its own share of the load;
a stale replica is used only when both samples are stale (it may be hung).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.signals import R, sample


def _key(h: R) -> tuple[bool, int, int]:
    stale = h.load_stale
    waiting = h.load.waiting if h.load is not None and not stale else 0
    return (stale or not h.routable, h.in_flight, waiting)


class PowerOfTwo(RoutingPolicy):
    name = "power_of_two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        if len(candidates) == 1:
            return candidates[0]
        a, b = sample(candidates, 2, self._rng)
        return a if _key(a) <= _key(b) else b
