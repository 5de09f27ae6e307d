"""Fakes of the read-only replica view (``cluster.router.policies.base.ReplicaView``), for policy tests.

No gRPC, no ``ReplicaHandle``: a policy that reached past the view (a channel,
a stub, the breaker's counters) would fail here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cluster.proto import replica_pb2
from cluster.router.policies.base import STALE_AFTER_S, ModelLoad, ReplicaView


@dataclass(eq=False)
class FakeReplica:
    replica_id: str
    model: str = "m"
    in_flight: int = 0
    load: replica_pb2.LoadReport | None = None
    load_at: float = 0.0
    removed: bool = False
    #: Until when (time.monotonic()) the fake's circuit is open.
    ejected_until: float = 0.0
    group: ModelLoad = field(default_factory=ModelLoad)

    @property
    def load_stale(self) -> bool:
        return time.monotonic() - self.load_at > STALE_AFTER_S

    @property
    def routable(self) -> bool:
        return not self.removed and self.ejected_until <= time.monotonic()

    def begin(self) -> None:
        self.in_flight += 1
        self.group.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1
        self.group.in_flight -= 1


def _is_view(h: ReplicaView) -> ReplicaView:
    return h  # type check: FakeReplica satisfies the Protocol


def fake(rid: str, in_flight: int = 0, model: str = "m") -> FakeReplica:
    """One replica that never reported load (stale), with ``in_flight`` requests of this router."""
    return FakeReplica(replica_id=rid, model=model, in_flight=in_flight)


def fleet(n: int, model: str = "m", kv_capacity_tokens: int = 0) -> list[FakeReplica]:
    """``n`` fresh, idle replicas of one model sharing one load group, as a ReplicaSet would build them."""
    group = ModelLoad(size=n)
    reps = []
    for i in range(n):
        h = FakeReplica(replica_id=f"r{i}", model=model, group=group)
        report(h, kv_capacity_tokens=kv_capacity_tokens)
        reps.append(_is_view(h))  # type: ignore[arg-type]
    return reps


def report(h: FakeReplica, *, running: int = 0, waiting: int = 0, kv: float = 0.0, kv_capacity_tokens: int = 0, age_s: float = 0.0) -> None:
    """A load report from ``h`` received ``age_s`` seconds ago."""
    h.load = replica_pb2.LoadReport(
        replica_id=h.replica_id, running=running, waiting=waiting, kv_cache_usage=kv, kv_capacity_tokens=kv_capacity_tokens
    )
    h.load_at = time.monotonic() - age_s


def start(h: FakeReplica, n: int = 1) -> None:
    """``n`` requests of this router start on ``h`` (what the balancer does after a decision)."""
    for _ in range(n):
        h.begin()


def system_prompt(i: int, chars: int = 2000) -> str:
    words = [f"w{i}x{j}" for j in range(chars // 6 + 1)]
    return " ".join(words)[:chars]
