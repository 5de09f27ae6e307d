"""Routing policies, one module each, behind cluster.router.policies.base.RoutingPolicy."""

from __future__ import annotations

from cluster.config import PolicyOptions
from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.least_kv import LeastKv
from cluster.router.policies.power_of_two import PowerOfTwo
from cluster.router.policies.prefix_aware import PrefixAware
from cluster.router.policies.round_robin import RoundRobin
from cluster.router.policies.session_affinity import SessionAffinity
from cluster.router.policies.weighted import Weighted

POLICIES: dict[str, type[RoutingPolicy]] = {p.name: p for p in (RoundRobin, PowerOfTwo, PrefixAware, SessionAffinity, LeastKv, Weighted)}


def make_policy(name: str, options: PolicyOptions | None = None) -> RoutingPolicy:
    o = options or PolicyOptions()
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    if name == "prefix_aware":
        return PrefixAware(o.prefix_aware)
    if name == "session_affinity":
        return SessionAffinity(o.session_affinity)
    if name == "least_kv":
        return LeastKv(o.least_kv)
    if name == "weighted":
        return Weighted(o.weighted, o.prefix_aware, o.session_affinity)
    return POLICIES[name]()


__all__ = ["POLICIES", "RouteRequest", "RoutingPolicy", "make_policy"]
