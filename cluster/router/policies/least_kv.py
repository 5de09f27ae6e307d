"""Least KV-cache usage, over a random sample.

Spec: sample ``sample`` candidates (all when there are fewer); pick the one
with the lowest KV-cache usage from its load report (0..1) plus
``in_flight_weight`` x this router's in-flight requests there.  Stale
replicas (no fresh report) come last; ties go to the first sampled.

Why: KV usage is the resource that ends in preemption when it runs out, and
it grows with long prompts and long outputs, which request counts miss.  The
report is up to 100 ms old, so a burst could all go to the replica that was
emptiest at the last report: the in-flight term and the random sample (power
of k choices) spread such a burst.  Cost O(sample).  Failure mode: KV usage
includes cached, reusable blocks on some engines, so an idle replica with a
warm cache can look full.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cluster.config import LeastKvOptions, PolicyOptions
from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.signals import R, kv_usage_of, sample


class LeastKv(RoutingPolicy):
    name = "least_kv"

    def __init__(self, opts: LeastKvOptions | None = None, rng: random.Random | None = None) -> None:
        self.opts = opts or LeastKvOptions()
        self._rng = rng or random.Random()

    @classmethod
    def build(cls, options: PolicyOptions, rng: random.Random | None = None) -> LeastKv:
        return cls(options.least_kv, rng)

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        w = self.opts.in_flight_weight
        best: R | None = None
        best_key: tuple[bool, float] | None = None
        for h in sample(candidates, self.opts.sample, self._rng):
            key = (h.load_stale or not h.routable, kv_usage_of(h) + w * h.in_flight)
            if best_key is None or key < best_key:
                best, best_key = h, key
        assert best is not None
        return best
