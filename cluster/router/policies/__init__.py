"""Routing policies, one module each, behind cluster.router.policies.base.RoutingPolicy."""

from __future__ import annotations

from cluster.router.policies.base import RouteRequest, RoutingPolicy
from cluster.router.policies.power_of_two import PowerOfTwo
from cluster.router.policies.round_robin import RoundRobin

POLICIES: dict[str, type[RoutingPolicy]] = {p.name: p for p in (RoundRobin, PowerOfTwo)}


def make_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None


__all__ = ["POLICIES", "RouteRequest", "RoutingPolicy", "make_policy"]
