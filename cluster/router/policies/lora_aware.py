"""LoRA-aware routing: keep each adapter's traffic on the replicas that hold it in an active slot.

Spec:
1. A request for the base model (no adapter) is routed exactly as by
   ``prefix_aware``.
2. A request for adapter A: the *warm* replicas are the usable candidates
   (same model, fresh, not ejected) whose last load report lists A among its
   active adapters, or to which this router sent A within ``recent_s``
   (reports lag by up to one interval, and a burst must not spread A over
   every replica before the first report shows where it went).
3. Among the warm replicas under the bounded-load cap (no replica above
   ceil((1 + eps) x mean in-flight) after taking the request, as in
   ``prefix_aware``), the best score wins: prefix depth of the prompt keyed by
   the adapter (KV computed with A is A's own), minus ``load_weight`` x load
   / (mean + 1) -> outcome ``adapter_hit``.
4. No warm replica -> ``adapter_miss``; warm ones all over the cap ->
   ``adapter_spill``.  Both pick, by power of two choices, among the replicas
   holding the fewest adapters (active or sent recently), so adapters spread
   evenly over the replicas' slots instead of evicting each other on one, and
   a hot adapter spreads to a second replica, which then holds it too.
5. Record the choice (recent sends, and the prefix index under the adapter's key).

Why: a replica runs at most ``max_loras`` adapters per batch; a request for
another waits for a slot and the swap costs a load.  Round robin sends every
adapter everywhere, so with more adapters than slots every replica thrashes;
affinity keeps each adapter's slot warm, and the cap keeps a hot adapter from
piling onto one replica.

Cost: O(candidates) set lookups plus the prefix policy's bounded lookup; a
miss also scans the recent-send memory (one timestamp per (adapter, replica)
pair sent to within ``recent_s``).
Failure modes: reports without adapter lists (an engine that does not say)
leave only the router's own recent sends as the warm signal; another router's
sends are seen one report later.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from cluster.config import LoraAwareOptions, PolicyOptions, PrefixAwareOptions
from cluster.router.policies.base import ReplicaView, RouteRequest, RoutingPolicy
from cluster.router.policies.prefix_aware import PrefixAware
from cluster.router.policies.prefix_index import PrefixIndex
from cluster.router.policies.signals import R, least_loaded, load_of, under_cap, usable


def active_adapters(h: ReplicaView) -> Sequence[str]:
    rep = h.load
    return getattr(rep, "active_adapters", ()) if rep is not None and not h.load_stale else ()


class LoraAware(RoutingPolicy):
    name = "lora_aware"

    def __init__(
        self, opts: LoraAwareOptions | None = None, prefix: PrefixAwareOptions | None = None, rng: random.Random | None = None
    ) -> None:
        self.opts = opts or LoraAwareOptions()
        self._rng = rng or random.Random()
        self.base = PrefixAware(prefix, self._rng)
        self.index: PrefixIndex = self.base.index
        #: adapter -> replica id -> time.monotonic() of the last request this router sent there with it.
        self._sent: dict[str, dict[str, float]] = {}

    @classmethod
    def build(cls, options: PolicyOptions, rng: random.Random | None = None) -> LoraAware:
        return cls(options.lora_aware, options.prefix_aware, rng)

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        adapter = request.adapter
        if adapter is None:
            return self.base.choose(candidates, request)
        o = self.opts
        now = time.monotonic()
        sent = self._sent.setdefault(adapter, {})
        hashes = self.index.hashes(f"\x00lora:{adapter}\x00{request.prompt}")
        depth = self.index.matches(hashes) if hashes else {}
        n = max(len(hashes), 1)
        best: R | None = None
        best_score = float("-inf")
        warm = False
        for h in candidates:
            if not usable(h, request.model, now):
                continue
            if now - sent.get(h.replica_id, -1e9) > o.recent_s and adapter not in active_adapters(h):
                continue
            warm = True
            if not under_cap(h, o.balance_eps):
                continue
            score = depth.get(h, 0) / n - o.load_weight * load_of(h) / (h.group.mean_in_flight + 1)
            if score > best_score:
                best, best_score = h, score
        if best is not None:
            request.outcome = "adapter_hit"
        else:
            request.outcome = "adapter_spill" if warm else "adapter_miss"
            best = self._coldest(candidates, now)
        sent[best.replica_id] = now
        if len(sent) > 4 * len(candidates):  # forget replicas long gone
            for rid in [r for r, t in sent.items() if now - t > o.recent_s]:
                del sent[rid]
        self.index.record(best, hashes)
        return best

    def _coldest(self, candidates: Sequence[R], now: float) -> R:
        """The replica holding the fewest adapters (active in its report or sent recently), then the least loaded."""
        held: dict[str, set[str]] = {}
        for adapter, sent in self._sent.items():
            for rid, t in sent.items():
                if now - t <= self.opts.recent_s:
                    held.setdefault(rid, set()).add(adapter)
        counts = {h.replica_id: len(held.get(h.replica_id, set()) | set(active_adapters(h))) for h in candidates}
        fewest = min(counts.values())
        return least_loaded([h for h in candidates if counts[h.replica_id] == fewest], self._rng)
