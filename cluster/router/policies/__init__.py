"""Routing policies, one module each, behind cluster.router.policies.base.RoutingPolicy.

The registry is built by importing every module of this package and keeping
the :class:`RoutingPolicy` subclasses it defines (those with a ``name``): a
new policy is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
import random

from cluster.router.policies.base import ReplicaView, RouteRequest, RoutingPolicy

#: Modules of this package that are helpers, not policies.
_HELPERS = {"base", "signals", "prefix_index", "published", "sessions"}


def _discover() -> dict[str, type[RoutingPolicy]]:
    found: dict[str, type[RoutingPolicy]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _HELPERS or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, RoutingPolicy) and obj.__module__ == mod.__name__ and "name" in vars(obj):
                if obj.name in found:
                    raise RuntimeError(f"two routing policies named {obj.name!r}")
                found[obj.name] = obj
    return found


#: Every routing policy by name.
POLICIES: dict[str, type[RoutingPolicy]] = _discover()


def make_policy(name: str, options: object | None = None, rng: random.Random | None = None) -> RoutingPolicy:
    from cluster.config import PolicyOptions

    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return cls.build(options if isinstance(options, PolicyOptions) else PolicyOptions(), rng)


__all__ = ["POLICIES", "ReplicaView", "RouteRequest", "RoutingPolicy", "make_policy"]
