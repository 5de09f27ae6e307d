"""Per-node slots: the small integers that give each replica on a node its own CPU cores and metrics port.

One :class:`SlotAllocator` hands out the smallest free slot per node;
:class:`ReplicaSlots` keeps one for CPU cores (vLLM CPU replicas) and one for
metrics ports (when ``controller.replica_metrics_port`` is set), and gives a
replica both, and back.  Slots are not
recovered after a controller restart: adopted replicas keep their cores and
ports, new ones may be given overlapping ones.
"""

from __future__ import annotations

import ray

from cluster.config import ModelConfig
from cluster.controller.replica import Replica

CPU_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"

#: The node key of a replica whose node is unknown.
UNKNOWN_NODE = "?"


class SlotAllocator:
    def __init__(self) -> None:
        self._used: dict[str, set[int]] = {}

    def take(self, node: str | None) -> int:
        used = self._used.setdefault(node or UNKNOWN_NODE, set())
        slot = next(i for i in range(len(used) + 1) if i not in used)
        used.add(slot)
        return slot

    def release(self, node: str | None, slot: int | None) -> None:
        if slot is not None:
            self._used.get(node or UNKNOWN_NODE, set()).discard(slot)

    def used(self, node: str | None) -> set[int]:
        return set(self._used.get(node or UNKNOWN_NODE, ()))


class ReplicaSlots:
    """The slots replicas hold on their nodes: their own CPU cores, their own metrics port."""

    def __init__(self, metrics_base_port: int) -> None:
        self.metrics_base_port = metrics_base_port
        self.cpu = SlotAllocator()
        self.metrics = SlotAllocator()

    def assign(self, r: Replica, model: ModelConfig) -> tuple[dict[str, str], int]:
        """The replica's environment (with its cores bound, for a vLLM CPU replica) and metrics port (0: ephemeral)."""
        env = dict(model.env)
        port = 0
        if self.metrics_base_port:
            r.metrics_slot = self.metrics.take(r.node_id)
            port = self.metrics_base_port + r.metrics_slot
        if model.engine == "vllm" and model.num_gpus_per_shard == 0 and CPU_BIND_ENV not in env:
            r.cpu_slot = self.cpu.take(r.node_id)
            env[CPU_BIND_ENV] = cpu_binding(r.cpu_slot, model, node_cpus(r.node_id))
        return env, port

    def release(self, r: Replica) -> None:
        self.cpu.release(r.node_id, r.cpu_slot)
        self.metrics.release(r.node_id, r.metrics_slot)
        r.cpu_slot = r.metrics_slot = None


def cpu_binding(slot: int, model: ModelConfig, node_cpus: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the replica in ``slot``: its own cores, round-robin over the node.

    Without this every replica's OpenMP threads bind to core 0 and throughput
    halves.  Shards of one replica are separated by '|', as vLLM expects.
    """
    ncpu = max(1, node_cpus)
    per = max(1, int(model.shard_cpus))
    cores = []
    for k in range(model.num_shards):
        first = ((slot * model.num_shards + k) * per) % ncpu
        cores.append(",".join(str((first + j) % ncpu) for j in range(per)) if per > 1 else str(first))
    return "|".join(cores)


def node_cpus(node_id: str | None) -> int:
    """Ray's logical CPUs of a node (1 when unknown)."""
    for n in ray.nodes():
        if n.get("NodeID") == node_id:
            return int(n.get("Resources", {}).get("CPU", 1))
    return 1
