"""Session affinity with spill-over.

Spec: a request carrying a session key (HTTP ``x-session-id`` header, else the
OpenAI ``user`` field; gRPC ``x-session-id`` metadata) goes to the replica
that served the session last (outcome ``session_hit``), as long as that
replica is usable (same model, not ejected, fresh load report) and stays
under the bounded-load cap ceil((1 + eps) x mean in-flight) after taking it.
Otherwise the request spills over (``spill_over``) to the less loaded of two
random candidates, and the session moves there: that replica now has the
conversation's latest turn in its cache.  A new session (``session_new``)
and a request without a key (``no_session``) go to the less loaded of two.

Why: a multi-turn chat resends its whole history; keeping it on one replica
turns every turn after the first into a prefix-cache hit, with no prompt
hashing at all.  Sessions are remembered in an LRU of ``max_sessions``.
Failure mode: many sessions of one key (a shared key) pile up until the cap
spills them; sessions are per router, so with several routers a session
sticks per router.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cluster.config import PolicyOptions, SessionAffinityOptions
from cluster.router.policies.base import ReplicaView, RouteRequest, RoutingPolicy
from cluster.router.policies.sessions import SessionMap
from cluster.router.policies.signals import R, least_loaded, under_cap, usable


class SessionAffinity(RoutingPolicy):
    name = "session_affinity"

    def __init__(self, opts: SessionAffinityOptions | None = None, rng: random.Random | None = None) -> None:
        self.opts = opts or SessionAffinityOptions()
        self.sessions: SessionMap = SessionMap(self.opts.max_sessions)
        self._rng = rng or random.Random()

    @classmethod
    def build(cls, options: PolicyOptions, rng: random.Random | None = None) -> SessionAffinity:
        return cls(options.session_affinity, rng)

    def preferred(self, request: RouteRequest) -> ReplicaView | None:
        if not request.session_id:
            return None
        return self.sessions.get((request.model, request.session_id))

    def choose(self, candidates: Sequence[R], request: RouteRequest) -> R:
        if not request.session_id:
            request.outcome = "no_session"
            return least_loaded(candidates, self._rng)
        key = (request.model, request.session_id)
        h = self.sessions.get(key)
        if h is not None:
            ok = usable(h, request.model) and (not request.attempt or h in candidates)
            if ok and under_cap(h, self.opts.balance_eps):
                request.outcome = "session_hit"
                self.sessions.touch(key)
                return h  # type: ignore[return-value]  # h is among the candidates' kind
            request.outcome = "spill_over"
        else:
            request.outcome = "session_new"
        pick = least_loaded(candidates, self._rng)
        self.sessions.remember(key, pick)
        return pick
