"""The routing-policy interface.

A policy picks one replica for one request from the candidates the balancer
hands it: the ready replicas of the request's model, minus any already tried
for this request.  ``choose`` runs on the router's per-request hot path, on the
event loop: it must be synchronous, never block, and cost O(candidates) at
most, and should cost O(1) or a bounded sample: with 1,000 replicas a
decision must stay well under 100 us.  Candidates are never empty.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cluster.router.replicas import ReplicaHandle


@dataclass(slots=True)
class RouteRequest:
    """What a policy may look at, and where it notes what it decided."""

    model: str
    request_id: str
    #: The prompt text (chat: the messages' contents, concatenated) for prefix policies.
    prompt: str = ""
    session_id: str | None = None
    #: 0 for the first attempt; retries pass the candidates minus those already tried.
    attempt: int = 0
    #: Set by the policy: the decision's outcome label for the routing-decisions
    #: metric (pick, prefix_hit, prefix_miss, session_hit, session_new, spill_over...).
    outcome: str = "pick"


class RoutingPolicy(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def choose(self, candidates: Sequence[ReplicaHandle], request: RouteRequest) -> ReplicaHandle:
        """Return one of ``candidates``."""
