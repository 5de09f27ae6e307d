"""The controller owns each model's LoRA adapters: on a real local Ray cluster with sim replicas.

Loads reach every replica of the base model, including one that starts later; a refused load leaves
nothing half-loaded; the set survives a controller restart; routers see it in the endpoint set.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
import ray

from cluster.controller import CONTROLLER_NAME
from tests.conftest import local_ray, start_deployment

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]

OVERRIDES = [
    "models.0.name=base",
    "models.0.engine=sim",
    "models.0.replicas=2",
    "models.0.engine_args={time_scale: 0.1}",
    "models.0.lora={adapters: [{name: static-a, path: sim://static-a}], max_loras: 2}",
    "router.host=127.0.0.1",
    "router.grpc_port=0",
    "router.http_port=0",
    "router.metrics_port=0",
    "controller.metrics_port=0",
    "controller.health_check_interval_s=0.3",
]


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray("llm-cluster-lora-test"):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(ray_cluster):
    _, controller, router = await start_deployment(OVERRIDES, ready=2)
    yield controller, router
    await router.stop(0.5)


async def replica_adapters(controller) -> dict[str, list[str]]:
    status = await controller.status.remote()
    out = {}
    for r in status["replicas"]:
        if r["state"] == "READY":
            h = await ray.get_actor(f"llm-cluster-replica-{r['replica_id']}").health.remote()
            out[r["replica_id"]] = h["adapters"]
    return out


async def test_the_configured_adapter_is_on_every_replica_and_in_the_routers_endpoint_set(cluster):
    controller, _ = cluster
    reps = await replica_adapters(controller)
    assert len(reps) == 2 and all(a == ["static-a"] for a in reps.values())
    _, eps = await controller.watch.remote(0, 1.0)
    assert {e["adapters"] for e in eps["base"]} == {"static-a"}


async def test_an_adapter_loaded_at_run_time_reaches_every_replica_including_one_started_later(cluster):
    controller, _ = cluster
    res = await controller.load_adapter.remote("team-b", "sim://team-b")
    assert res["ok"] and res["model"] == "base", res
    assert all(sorted(a) == ["static-a", "team-b"] for a in (await replica_adapters(controller)).values())
    await controller.set_replicas.remote("base", 3)
    await wait_for_ready(controller, 3)
    reps = await replica_adapters(controller)
    assert len(reps) == 3 and all(sorted(a) == ["static-a", "team-b"] for a in reps.values()), reps
    await controller.set_replicas.remote("base", 2)


async def test_an_adapter_over_max_lora_rank_is_refused_and_loaded_nowhere(cluster, tmp_path):
    controller, _ = cluster
    big = tmp_path / "big"
    big.mkdir()
    (big / "adapter_config.json").write_text(json.dumps({"r": 64, "peft_type": "LORA"}))
    res = await controller.load_adapter.remote("big", str(big))
    assert res["status"] == 400 and "rank 64, above max_lora_rank 16" in res["message"], res
    assert all("big" not in a for a in (await replica_adapters(controller)).values())
    assert "big" not in (await controller.list_adapters.remote())["base"]


async def test_bad_loads_and_unloads_get_vllms_statuses(cluster):
    controller, _ = cluster
    assert (await controller.load_adapter.remote("base", "sim://x"))["status"] == 400  # a model's name
    assert (await controller.load_adapter.remote("x", "sim://x", "nope"))["status"] == 404
    again = await controller.load_adapter.remote("static-a", "sim://other")
    assert again["status"] == 400 and "already been loaded" in again["message"]
    gone = await controller.unload_adapter.remote("never-loaded")
    assert gone["status"] == 404 and "never-loaded" in gone["message"]


async def test_unloading_removes_the_adapter_from_every_replica(cluster):
    controller, _ = cluster
    await controller.load_adapter.remote("tmp", "sim://tmp")
    assert (await controller.unload_adapter.remote("tmp"))["ok"]
    assert all("tmp" not in a for a in (await replica_adapters(controller)).values())


async def test_the_adapter_set_survives_a_controller_restart(cluster):
    controller, _ = cluster
    await controller.load_adapter.remote("kept", "sim://kept")
    ray.kill(ray.get_actor(CONTROLLER_NAME), no_restart=False)
    restarted = None
    for _ in range(100):
        try:
            restarted = ray.get_actor(CONTROLLER_NAME)
            listed = await asyncio.wait_for(restarted.list_adapters.remote(), 5)
            break
        except Exception:
            await asyncio.sleep(0.2)
    else:
        raise AssertionError("controller did not come back")
    assert listed["base"] == {"static-a": "sim://static-a", "team-b": "sim://team-b", "kept": "sim://kept"}
    reps = await replica_adapters(restarted)
    assert all("kept" in a for a in reps.values())


async def wait_for_ready(controller, n: int, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await controller.replica_counts.remote("base"))["ready"] < n:
        assert loop.time() < deadline, f"{n} ready replicas not reached in {timeout_s} s"
        await asyncio.sleep(0.2)
