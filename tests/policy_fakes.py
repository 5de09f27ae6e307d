"""Fake replica handles with load reports, for policy tests (no gRPC)."""

from __future__ import annotations

import time

from cluster.proto import replica_pb2
from cluster.router.replicas import ModelLoad, ReplicaHandle


def fleet(n: int, model: str = "m", kv_capacity_tokens: int = 0) -> list[ReplicaHandle]:
    """``n`` fresh, idle replicas of one model sharing one load group, as a ReplicaSet would build them."""
    group = ModelLoad(size=n)
    reps = []
    for i in range(n):
        h = ReplicaHandle(replica_id=f"r{i}", model=model, address="fake:0", channel=None, stub=None, group=group)  # type: ignore[arg-type]
        report(h, kv_capacity_tokens=kv_capacity_tokens)
        reps.append(h)
    return reps


def report(
    h: ReplicaHandle, *, running: int = 0, waiting: int = 0, kv: float = 0.0, kv_capacity_tokens: int = 0, age_s: float = 0.0
) -> None:
    """A load report from ``h`` received ``age_s`` seconds ago."""
    h.load = replica_pb2.LoadReport(
        replica_id=h.replica_id, running=running, waiting=waiting, kv_cache_usage=kv, kv_capacity_tokens=kv_capacity_tokens
    )
    h.load_at = time.monotonic() - age_s


def start(h: ReplicaHandle, n: int = 1) -> None:
    """``n`` requests of this router start on ``h`` (what the balancer does after a decision)."""
    for _ in range(n):
        h.begin()


def system_prompt(i: int, chars: int = 2000) -> str:
    words = [f"w{i}x{j}" for j in range(chars // 6 + 1)]
    return " ".join(words)[:chars]
