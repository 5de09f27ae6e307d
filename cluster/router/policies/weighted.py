"""A weighted combination of scorers, mixed by the operator in config.

Spec: the scored replicas are (a) those the prefix index says recently got a
prefix of this prompt, (b) the session's last replica, and (c) ``sample``
random candidates, so the cost stays bounded whatever the replica count.
Each usable one (same model, not ejected, fresh report, among the candidates
on a retry) that is under the bounded-load cap gets

    score = prefix x matched fraction of the prompt's blocks
          + session x (1 if it served this session last)
          - load x load / (mean in-flight + 1)
          - kv x KV-cache usage (0..1)
          - ttft x the replica's recent TTFT in seconds (default weight 0)

and the best score wins; if none qualifies, the least loaded of two random
candidates.  The outcome is ``prefix_hit`` when the winner had a prefix
match, else ``session_hit`` when it was the session's, else ``pick``.  The
prompt is recorded in the prefix index and the session map for the winner.

Examples: ``{prefix: 1, load: 0.3}`` is prefix-aware with a softer load
trade-off; ``{session: 1, load: 0.5}`` is session affinity; ``{kv: 1}`` is
least KV.  Failure modes: those of the scorers it mixes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from cluster.config import PolicyOptions, PrefixAwareOptions, SessionAffinityOptions, WeightedOptions
from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.prefix_index import PrefixIndex
from cluster.router.policies.sessions import SessionMap
from cluster.router.policies.signals import BoundedLoad, R, fresh_load_of, least_loaded, sample, usable


class Weighted(RoutingPolicy):
    name = "weighted"

    def __init__(
        self,
        opts: WeightedOptions | None = None,
        prefix_opts: PrefixAwareOptions | None = None,
        session_opts: SessionAffinityOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.opts = opts or WeightedOptions()
        self.index = PrefixIndex(prefix_opts or PrefixAwareOptions())
        self.sessions: SessionMap = SessionMap((session_opts or SessionAffinityOptions()).max_sessions)
        self._rng = rng or random.Random()

    @classmethod
    def build(cls, options: PolicyOptions, rng: random.Random | None = None) -> Weighted:
        return cls(options.weighted, options.prefix_aware, options.session_affinity, rng)

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        o = self.opts
        hashes = self.index.hashes(request.prompt) if o.prefix > 0 else []
        # Fewer holders than prefix_aware looks at: each costs four scorers here.
        depth = self.index.matches(hashes, max_holders=6) if hashes else {}
        skey = (request.model, request.session_id) if request.session_id else None
        mine = self.sessions.get(skey) if skey is not None and o.session > 0 else None
        scored: dict = dict.fromkeys(depth)
        if mine is not None:
            scored[mine] = None
        for h in sample(candidates, o.sample, self._rng):
            scored[h] = None
        n = max(len(hashes), 1)
        best: R | None = None
        best_score = float("-inf")
        now = time.monotonic()  # once for every replica scored
        bounded = BoundedLoad(o.balance_eps)
        for h in scored:
            if not usable(h, request.model, now) or (request.attempt and h not in candidates) or bounded.over(h):
                continue
            rep = h.load
            score = (
                o.prefix * depth.get(h, 0) / n
                + (o.session if h is mine else 0.0)
                - o.load * fresh_load_of(h) / bounded.mean
                - o.kv * (rep.kv_cache_usage if rep is not None else 0.0)
                - o.ttft * (rep.recent_ttft_s if rep is not None else 0.0)
            )
            if score > best_score:
                best, best_score = h, score
        if best is None:
            best = least_loaded(candidates, self._rng)
            request.outcome = "spill_over" if scored else "pick"
        elif depth.get(best):
            request.outcome = "prefix_hit"
        elif best is mine:
            request.outcome = "session_hit"
        else:
            request.outcome = "pick"
        self.index.record(best, hashes)
        if skey is not None:
            self.sessions.remember(skey, best)
        return best
