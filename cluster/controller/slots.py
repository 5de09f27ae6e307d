"""Per-node slots: the small integers that give each replica on a node its own CPU cores and metrics port.

One :class:`SlotAllocator` hands out the smallest free slot per node; the
controller keeps one for CPU cores (vLLM CPU replicas) and one for metrics
ports (when ``controller.replica_metrics_port`` is set).  Slots are not
recovered after a controller restart: adopted replicas keep their cores and
ports, new ones may be given overlapping ones.
"""

from __future__ import annotations

import ray

from cluster.config import ModelConfig

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
