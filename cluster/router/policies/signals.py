"""Load signals and candidate sampling shared by the policies.

A replica's load, as the router sees it, combines two sources:

- the router's own in-flight count per replica (exact, updated on every
  request, but blind to other routers' traffic), and
- the replica's pushed :class:`LoadReport` (every 100 ms: running, waiting,
  KV usage, recent TTFT), which covers every router's traffic but is up to one
  interval old.

``load_of`` takes the larger of the two views, so neither a burst this router
just sent nor traffic from other routers is missed.  A replica whose last
report is older than ``STALE_AFTER_S`` (or that never reported) is *stale*:
its load is unknown and it may be hung or partitioned, so policies prefer
fresh replicas and fall back to stale ones only when nothing else is left.

Everything here is O(1) per replica looked at; policies look at a bounded
sample, never at all replicas, so a decision stays cheap with 1,000 replicas.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

from cluster.router.policies.base import STALE_AFTER_S, ReplicaView

R = TypeVar("R", bound=ReplicaView)


def load_of(h: ReplicaView) -> int:
    """Requests on the replica: max(this router's in-flight, the replica's running + waiting)."""
    rep = h.load
    if rep is None or h.load_stale:
        return h.in_flight
    return max(h.in_flight, rep.running + rep.waiting)


def fresh_load_of(h: ReplicaView) -> int:
    """``load_of`` for a replica already known to be fresh (skips a clock read)."""
    rep = h.load
    return h.in_flight if rep is None else max(h.in_flight, rep.running + rep.waiting)


def kv_usage_of(h: ReplicaView) -> float:
    rep = h.load
    return rep.kv_cache_usage if rep is not None and not h.load_stale else 0.0


def load_cap(h: ReplicaView, eps: float) -> int:
    """Bounded loads: the most in-flight requests a replica may hold after taking one more.

    ceil((1 + eps) * (total + 1) / n), as in consistent hashing with bounded
    loads (Mirrokni et al.): the mean includes the request being placed, so
    with an idle cluster the cap is at least 1 and some replica always fits.
    """
    g = h.group
    return max(1, math.ceil((1 + eps) * (g.in_flight + 1) / max(g.size, 1)))


def under_cap(h: ReplicaView, eps: float) -> bool:
    return h.in_flight + 1 <= load_cap(h, eps)


class BoundedLoad:
    """One decision's bounded-load cap and mean load (+1), for a policy that checks many of a model's replicas:
    read from the first one asked about (a model's replicas share its group), then reused."""

    __slots__ = ("cap", "eps", "mean")

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.cap = 0
        self.mean = 1.0

    def over(self, h: ReplicaView) -> bool:
        """``not under_cap(h, eps)``."""
        if not self.cap:
            self.cap, self.mean = load_cap(h, self.eps), h.group.mean_in_flight + 1
        return h.in_flight + 1 > self.cap


def sample(candidates: Sequence[R], k: int, rng: random.Random) -> Sequence[R]:
    """Up to ``k`` distinct candidates, uniformly at random (all of them when there are at most ``k``)."""
    n = len(candidates)
    if n <= k:
        return candidates
    if k == 2:
        i = rng.randrange(n)
        j = rng.randrange(n - 1)
        return (candidates[i], candidates[j + 1 if j >= i else j])
    return [candidates[i] for i in rng.sample(range(n), k)]


def least_loaded(candidates: Sequence[R], rng: random.Random, k: int = 2) -> R:
    """Power of k choices: the fresh, least loaded of ``k`` random candidates (stale and ejected ones last)."""
    best: R | None = None
    best_key: tuple[bool, int] | None = None
    for h in sample(candidates, k, rng):
        key = (h.load_stale or not h.routable, load_of(h))
        if best_key is None or key < best_key:
            best, best_key = h, key
    assert best is not None
    return best


def usable(h: ReplicaView, model: str, now: float | None = None) -> bool:
    """A replica remembered by an index may still be chosen: same model, in the set, not ejected, fresh.

    ``now`` (time.monotonic()) lets a policy that checks many replicas read the clock once.
    """
    if now is None:
        return h.model == model and h.routable and not h.load_stale
    return h.model == model and now - h.load_at <= STALE_AFTER_S and h.routable
