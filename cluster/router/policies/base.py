"""The routing-policy interface.

A policy picks one replica for one request from the candidates the balancer
hands it: the ready replicas of the request's model, minus any already tried
for this request.  ``choose`` runs on the router's per-request hot path, on the
event loop: it must be synchronous, never block, and cost O(candidates) at
most.  Candidates are never empty.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cluster.router.replicas import ReplicaHandle


@dataclass(slots=True)
class RouteRequest:
    """What a policy may look at: the model and request id (prompt for later policies)."""

    model: str
    request_id: str
    prompt: str = ""
    session_id: str | None = None


class RoutingPolicy(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def choose(self, candidates: Sequence[ReplicaHandle], request: RouteRequest) -> ReplicaHandle:
        """Return one of ``candidates``."""
