"""On a two-node Ray cluster, a replica's bundles land where its TP/PP spec says.

Tensor-parallel shards must share a node (STRICT_PACK); pipeline stages may
span nodes (PACK) when one node cannot hold them all.  Each node here has two
CPUs, so a shard of two CPUs fills a node.
"""

from __future__ import annotations

import time

import pytest
import ray

from cluster.config import load_config
from cluster.controller import CONTROLLER_NAME, get_or_create_controller
from cluster.replica.placement import choose_executor_backend, plan_placement
from tests.conftest import start_ray_cluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def model(**kw):
    overrides = ["models.0.engine=sim", "models.0.name=m"] + [f"models.0.{k}={v}" for k, v in kw.items()]
    return load_config(overrides=overrides).models[0]


def test_tensor_parallel_packs_strictly_and_pipeline_parallel_may_spread():
    tp = plan_placement(model(tensor_parallel_size=3, num_cpus_per_shard=1))
    assert tp.strategy == "STRICT_PACK" and tp.bundles == [{"CPU": 1.0}] * 3
    pp = plan_placement(model(tensor_parallel_size=2, pipeline_parallel_size=2, num_gpus_per_shard=1, num_cpus_per_shard=1))
    assert pp.strategy == "PACK" and pp.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 4


def test_executor_backend_follows_where_the_shards_can_live():
    assert choose_executor_backend(model()) is None  # one shard: no distributed executor
    assert choose_executor_backend(model(tensor_parallel_size=3)) == "mp"  # CPU TP on one node
    assert choose_executor_backend(model(tensor_parallel_size=2, num_gpus_per_shard=1)) == "ray"  # GPUs from Ray bundles
    assert choose_executor_backend(model(pipeline_parallel_size=2)) == "ray"  # may cross nodes
    assert choose_executor_backend(model(tensor_parallel_size=2, executor_backend="mp", num_gpus_per_shard=1)) == "mp"


@pytest.fixture(scope="module")
def two_nodes():
    c, _ = start_ray_cluster({"num_cpus": 2}, [{"num_cpus": 2}])
    ray.init(address=c.address, namespace="llm-cluster-placement", logging_level="WARNING")
    yield c
    try:
        ray.get(ray.get_actor(CONTROLLER_NAME).shutdown.remote(), timeout=60)
    finally:
        ray.shutdown()
        c.shutdown()


def _ready_replicas(controller, n: int, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = ray.get(controller.status.remote())
        ready = [r for r in st["replicas"] if r["state"] == "READY"]
        if len(ready) >= n:
            return ready
        time.sleep(0.2)
    raise AssertionError(f"replicas not ready: {st}")


def test_replica_bundles_land_as_the_tp_pp_spec_says_on_two_nodes(two_nodes):
    cfg = load_config(
        overrides=[
            "models.0.name=tp2",
            "models.0.engine=sim",
            "models.0.tensor_parallel_size=2",
            "models.0.num_cpus_per_shard=1",
            "models.0.replicas=1",
            "models.1.name=pp2",
            "models.1.engine=sim",
            "models.1.pipeline_parallel_size=2",
            "models.1.num_cpus_per_shard=2",
            "models.1.replicas=0",
            "controller.health_check_interval_s=0.3",
        ]
    )
    controller = get_or_create_controller(cfg)
    (tp_replica,) = _ready_replicas(controller, 1)
    tp = ray.get(controller.placement.remote(tp_replica["replica_id"]))
    assert tp["strategy"] == "STRICT_PACK" and len(tp["bundles"]) == 2
    assert len(set(tp["bundles_to_node_id"].values())) == 1  # both TP shards on one node
    # Free the cluster, then place the pipeline-parallel replica alone.
    ray.get(controller.set_replicas.remote("tp2", 0))
    ray.get(controller.set_replicas.remote("pp2", 1))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = [r for r in ray.get(controller.status.remote())["replicas"] if r["state"] == "READY" and r["model"] == "pp2"]
        if ready:
            break
        time.sleep(0.2)
    assert ready, "pp2 replica did not start"
    pp = ray.get(controller.placement.remote(ready[0]["replica_id"]))
    assert pp["strategy"] == "PACK" and len(pp["bundles"]) == 2
    assert len(set(pp["bundles_to_node_id"].values())) == 2  # a node holds one 2-CPU stage: stages span both nodes
