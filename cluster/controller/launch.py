"""Ray objects of one replica: its placement group and actor, created and removed.

A replica is a detached placement group (cluster.replica.placement) named like
its actor, and a detached, named replica actor in bundle 0 of it.  Both are
detached so that they outlive a restart of the controller (see
cluster.controller.adoption).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import ModelConfig
from cluster.controller.adoption import replica_name
from cluster.controller.replica import Replica
from cluster.replica.placement import PlacementPlan


def create_placement_group(replica_id: str, plan: PlacementPlan) -> PlacementGroup:
    # Detached: the group must outlive a restart of the controller, or Ray
    # would remove it, and the replica in it, with the old incarnation.
    return placement_group(plan.bundles, strategy=plan.strategy, name=replica_name(replica_id), lifetime="detached")


def bundle_node(pg: PlacementGroup, bundle: int = 0) -> str | None:
    return ray.util.placement_group_table(pg)["bundles_to_node_id"].get(bundle)


def create_replica_actor(
    r: Replica, model: ModelConfig, plan: PlacementPlan, env: dict[str, str], tls: dict[str, Any], metrics_port: int
) -> Any:
    from cluster.replica.actor import ReplicaActor

    return (
        ray.remote(ReplicaActor)
        .options(
            name=replica_name(r.replica_id),
            namespace=ray.get_runtime_context().namespace,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=r.pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        )
        .remote(r.replica_id, model.model_dump(), plan.executor_backend, env, tls, metrics_port)
    )


def remove_replica(r: Replica) -> None:
    """Kill the replica's actor and remove its placement group (errors ignored: either may be gone already)."""
    if r.actor is not None:
        try:
            ray.kill(r.actor, no_restart=True)
        except Exception:
            pass
    if r.pg is not None:
        try:
            remove_placement_group(r.pg)
        except Exception:
            pass
