"""Prefix-aware routing with bounded loads.

Spec:
1. Hash the prompt into chained block hashes (see ``prefix_index``: text
   blocks by default, the sim tokenizer's blocks with ``hash_unit: sim_tokens``).
2. Look up, in the router's approximate per-replica index, how many leading
   blocks each replica was recently sent ("depth").  Only usable replicas
   count: same model, not ejected, fresh load report, and among the
   candidates when this is a retry.
3. Among them, keep those under the bounded-load cap: after taking the
   request, no replica may hold more than ceil((1 + eps) x mean in-flight)
   of this router's requests.  Score = depth / blocks - load_weight x
   load / (mean + 1); the best score wins -> outcome ``prefix_hit``.
4. A prompt with matches whose holders are all over the cap (a hot prefix)
   -> ``spill_over``; no match (or shorter than ``min_match``) ->
   ``prefix_miss``.  Both fall back to power of two choices on load, so a new
   or hot prefix spreads to a second replica, which then holds it too.
5. Record the prompt's hashes as sent to the chosen replica (LRU per replica,
   sized to its KV capacity).

Why: replicas behave as one big prefix cache only if the same prefix keeps
going to the same replica, but pure affinity piles a hot prefix onto one
replica; the bounded-load cap (Mirrokni et al., consistent hashing with
bounded loads) caps that at a constant factor of the mean.

Cost: O(prompt blocks) hashing plus a bounded lookup per request, independent of the
number of replicas; memory bounded per replica (see ``prefix_index``).
Failure modes: the index is optimistic (it does not see evictions or other
routers); a stale or ejected replica's entries are skipped, and a replica that
left the set is purged when met.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from cluster.config import PolicyOptions, PrefixAwareOptions
from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.prefix_index import PrefixIndex
from cluster.router.policies.signals import BoundedLoad, R, fresh_load_of, least_loaded, usable


class PrefixAware(RoutingPolicy):
    name = "prefix_aware"

    def __init__(self, opts: PrefixAwareOptions | None = None, rng: random.Random | None = None) -> None:
        self.opts = opts or PrefixAwareOptions()
        self.index = PrefixIndex(self.opts)
        self._rng = rng or random.Random()

    @classmethod
    def build(cls, options: PolicyOptions, rng: random.Random | None = None) -> PrefixAware:
        return cls(options.prefix_aware, rng)

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        o = self.opts
        hashes = self.index.hashes(request.prompt)
        best: R | None = None
        if hashes:
            depth = self.index.matches(hashes)
            n = len(hashes)
            best_score = float("-inf")
            over_cap = False
            now = time.monotonic()  # once for every holder scored
            bounded = BoundedLoad(o.balance_eps)
            for h, d in depth.items():
                if d / n < o.min_match or d == 0 or not usable(h, request.model, now):
                    continue
                if request.attempt and h not in candidates:
                    continue
                if bounded.over(h):
                    over_cap = True
                    continue
                score = d / n - o.load_weight * fresh_load_of(h) / bounded.mean
                if score > best_score:
                    best, best_score = h, score
            if best is None:
                request.outcome = "spill_over" if over_cap else "prefix_miss"
            else:
                request.outcome = "prefix_hit"
        else:
            request.outcome = "prefix_miss"
        if best is None:
            best = least_loaded(candidates, self._rng)
        self.index.record(best, hashes)
        return best
