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
from collections import OrderedDict
from collections.abc import Sequence

from cluster.config import SessionAffinityOptions
from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.signals import least_loaded, under_cap, usable
from cluster.router.replicas import ReplicaHandle


class SessionAffinity(RoutingPolicy):
    name = "session_affinity"

    def __init__(self, opts: SessionAffinityOptions | None = None, rng: random.Random | None = None) -> None:
        self.opts = opts or SessionAffinityOptions()
        self.sessions: OrderedDict[tuple[str, str], ReplicaHandle] = OrderedDict()
        self._rng = rng or random.Random()

    def preferred(self, request: RouteRequest) -> ReplicaHandle | None:
        if not request.session_id:
            return None
        return self.sessions.get((request.model, request.session_id))

    def choose(self, candidates: Sequence[ReplicaHandle], request: RouteRequest) -> ReplicaHandle:
        if not request.session_id:
            request.outcome = "no_session"
            return least_loaded(candidates, self._rng)
        key = (request.model, request.session_id)
        h = self.sessions.get(key)
        if h is not None:
            ok = usable(h, request.model) and (not request.attempt or h in candidates)
            if ok and under_cap(h, self.opts.balance_eps):
                request.outcome = "session_hit"
                self.sessions.move_to_end(key)
                return h
            request.outcome = "spill_over"
        else:
            request.outcome = "session_new"
        h = least_loaded(candidates, self._rng)
        self.remember(key, h)
        return h

    def remember(self, key: tuple[str, str], h: ReplicaHandle) -> None:
        self.sessions[key] = h
        self.sessions.move_to_end(key)
        while len(self.sessions) > self.opts.max_sessions:
            self.sessions.popitem(last=False)
