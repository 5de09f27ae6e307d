"""What the controller knows about one replica: a :class:`Replica` record and its :class:`ReplicaState`.

Lifecycle::

    STARTING -> READY -> DRAINING -> STOPPED
        \\          \\
         +-> FAILED  +-> FAILED   (failed start, or failed health checks: replaced)

Only READY replicas are in the endpoint set.  A record is forgotten once it is
STOPPED or FAILED and none of its tasks is still running.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from ray.util.placement_group import PlacementGroup

log = logging.getLogger(__name__)


class ReplicaState(enum.StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def live(self) -> bool:
        """Counts towards the desired number of replicas."""
        return self in (ReplicaState.STARTING, ReplicaState.READY)

    @property
    def finished(self) -> bool:
        return self in (ReplicaState.STOPPED, ReplicaState.FAILED)


@dataclass(slots=True)
class ReplicaLoad:
    """The load figures of the replica's last health answer (None: not reported yet)."""

    in_flight: int | None = None
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None

    @classmethod
    def from_health(cls, h: dict[str, Any]) -> ReplicaLoad:
        return cls(h.get("in_flight"), h.get("running"), h.get("waiting"), h.get("kv_cache_usage"))


@dataclass
class Replica:
    replica_id: str
    model: str
    actor: Any = None
    pg: PlacementGroup | None = None
    state: ReplicaState = ReplicaState.STARTING
    # Where it serves, from start() or a health answer.
    address: str | None = None
    #: Its relay stream (host:port; None: it has none, routers call the OpenAI RPC).
    relay_address: str | None = None
    metrics_address: str | None = None
    max_model_len: int = 0
    #: The model card it reported (``root``, ``parent`` of vLLM's GET /v1/models), published in the endpoint set.
    card: dict[str, str] = field(default_factory=dict)
    node_id: str | None = None
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    # Health: consecutive failed checks, and whether Ray reported the actor dead.
    failures: int = 0
    dead: bool = False
    load: ReplicaLoad = field(default_factory=ReplicaLoad)
    # LoRA adapters its last health answer listed (None: it did not say).
    adapters: list[str] | None = None
    # Per-node slots held (cluster.controller.slots); None: none held.
    cpu_slot: int | None = None
    metrics_slot: int | None = None
    # Start, drain or cleanup tasks still running for this replica.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def serving(self) -> bool:
        """In the endpoint set: ready, with an address."""
        return self.state == ReplicaState.READY and bool(self.address)

    @property
    def forgettable(self) -> bool:
        return self.state.finished and not any(not t.done() for t in self.tasks)

    def summary(self) -> dict[str, Any]:
        """The replica as ``status()`` shows it."""
        return {
            "replica_id": self.replica_id,
            "model": self.model,
            "state": self.state.value,
            "address": self.address,
            "metrics_address": self.metrics_address,
            "node_id": self.node_id,
            "age_s": round(time.time() - self.started_at, 1),
            "restarts": self.restarts,
            "in_flight": self.load.in_flight,
            "running": self.load.running,
            "waiting": self.load.waiting,
            "kv_cache_usage": self.load.kv_cache_usage,
        }

    def observe(self, health: dict[str, Any]) -> None:
        """Take the load figures (and the adapters loaded) of a health answer."""
        self.load = ReplicaLoad.from_health(health)
        loaded = health.get("adapters")
        self.adapters = list(loaded) if isinstance(loaded, list) else None

    def serve_from(self, health: dict[str, Any]) -> None:
        """Take where the replica serves from a health answer (an adopted replica: no start() answer)."""
        self.address = health.get("address")
        self.relay_address = health.get("relay_address")
        self.metrics_address = health.get("metrics_address")
        self.max_model_len = int(health.get("max_model_len") or 0)
        self.card = health.get("card") or {}
        self.observe(health)

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Run ``coro`` for this replica, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro, name=f"replica-{self.replica_id}-{what}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("replica task failed", extra={"replica": self.replica_id, "task": task.get_name()}, exc_info=task.exception())
