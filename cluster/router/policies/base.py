"""The routing-policy interface, the read-only replica view policies see, and the registry.

A policy picks one replica for one request from the candidates the balancer
hands it: the ready replicas of the request's model, minus any the circuit
breaker ejected and any already tried for this request.  ``choose`` runs on
the router's per-request hot path, on the event loop: it must be synchronous,
never block, and cost O(candidates) at most, and should cost O(1) or a
bounded sample: with 1,000 replicas a decision must stay well under 100 us.
Candidates are never empty.

Policies see replicas through :class:`ReplicaView`, a read-only Protocol: no
channel, no stub, no way to change the router's counts.  The router's
``ReplicaHandle`` satisfies it; so do the fakes in ``tests/policy_fakes.py``.

Registry: each policy module defines one :class:`RoutingPolicy` subclass with
a ``name`` and a ``build(options, rng)`` factory that picks its own section of
``router.policy_options``; ``cluster.router.policies`` finds every module of
the package, so adding a policy is adding one file (plus its options model in
``cluster/config.py``, where every config field is documented).
"""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from cluster.config import PolicyOptions
    from cluster.proto.replica_pb2 import LoadReport

#: A replica whose last load report is older than this is treated as stale.
STALE_AFTER_S = 1.0


class GroupView(Protocol):
    """Totals over one model's replicas (this router's view), O(1) to read."""

    @property
    def in_flight(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def mean_in_flight(self) -> float: ...


@dataclass(eq=False, slots=True)
class ModelLoad:
    """Totals over one model's replicas, kept current so policies read the mean in O(1) (a ``GroupView``).

    Plain data: the router's ``ReplicaSet`` keeps one per model, and fakes of
    the view (tests, benchmarks) share it.
    """

    in_flight: int = 0
    size: int = 1

    @property
    def mean_in_flight(self) -> float:
        return self.in_flight / max(self.size, 1)


class ReplicaView(Protocol):
    """What a policy may read about one replica."""

    @property
    def replica_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def in_flight(self) -> int:
        """Requests this router has in flight there (exact, this router only)."""

    @property
    def load(self) -> LoadReport | None:
        """The replica's last pushed load report (None before the first)."""

    @property
    def load_at(self) -> float:
        """time.monotonic() when ``load`` arrived."""

    @property
    def load_stale(self) -> bool: ...
    @property
    def removed(self) -> bool:
        """Left the endpoint set (an index may still remember it)."""

    @property
    def routable(self) -> bool:
        """In the endpoint set and its circuit closed (or half-open)."""

    @property
    def group(self) -> GroupView: ...


@dataclass(slots=True)
class RouteRequest:
    """What a policy may look at, and where it notes what it decided."""

    model: str
    request_id: str
    #: The prompt text (chat: the messages' contents, concatenated) for prefix policies.
    prompt: str = ""
    session_id: str | None = None
    #: The LoRA adapter the request is for (``model`` is then its base model); None: the base model itself.
    adapter: str | None = None
    #: 0 for the first attempt; retries pass the candidates minus those already tried.
    attempt: int = 0
    #: Set by the policy: the decision's outcome label for the routing-decisions
    #: metric (pick, prefix_hit, prefix_miss, session_hit, session_new, spill_over...).
    outcome: str = "pick"


class RoutingPolicy(abc.ABC):
    #: The name in config (``router.policy``) and in ``x-routing-policy``.
    name: ClassVar[str]

    @classmethod
    def build(cls, options: PolicyOptions, rng: random.Random | None = None) -> RoutingPolicy:
        """A new instance from ``router.policy_options`` (each policy reads its own section)."""
        return cls(rng=rng)  # type: ignore[call-arg]

    @abc.abstractmethod
    def choose(self, candidates: Sequence[ReplicaView], request: RouteRequest) -> ReplicaView:
        """Return one of ``candidates``."""
