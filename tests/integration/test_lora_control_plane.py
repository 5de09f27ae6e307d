"""The controller owns each model's LoRA adapters: on a real local Ray cluster with sim replicas.

Loads reach every replica of the base model, including one that starts later; a refused load leaves
nothing half-loaded; the set survives a controller restart; routers see it in the endpoint set, route
``model: <adapter>`` to the base model's replicas (lora_aware keeps it on the ones holding it), list it in
``GET /v1/models``, and let only admin keys load and unload adapters and allowed tenants call them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import httpx
import pytest
import pytest_asyncio
import ray

from cluster.config import load_config
from cluster.controller import CONTROLLER_NAME, get_or_create_controller
from cluster.router.app import Router
from cluster.router.auth import new_key
from cluster.router.lora import ControllerAdmin
from cluster.router.replicas import controller_source
from tests.conftest import LOOPBACK, local_ray, start_deployment, wait_for
from tests.integration.test_security import write_keys

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]

OVERRIDES = [
    "models.0.name=base",
    "models.0.engine=sim",
    "models.0.replicas=2",
    "models.0.engine_args={time_scale: 0.1}",
    "models.0.lora={adapters: [{name: static-a, path: sim://static-a}], max_loras: 2}",
    *LOOPBACK,
    "controller.health_check_interval_s=0.3",
    "router.policy=lora_aware",
    "router.no_replica_wait_s=60",  # scaled to zero, a request waits for the replica starting for it
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
    _, eps, adapters = await controller.watch.remote(0, 1.0)
    assert len(eps["base"]) == 2 and adapters["base"] == ["static-a"]
    assert cluster[1].replicas.adapters == {"static-a": "base"}  # what the router routes by


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


#: The actor's process id (a lambda: Ray ships it by value; the test module is not importable in the actor).
_pid = lambda actor: os.getpid()  # noqa: E731


async def test_the_adapter_set_survives_a_controller_restart(cluster):
    controller, _ = cluster
    await controller.load_adapter.remote("kept", "sim://kept")
    before = await controller.list_adapters.remote()
    assert "kept" in before["base"]
    old = ray.get_actor(CONTROLLER_NAME)
    old_pid = await old.__ray_call__.remote(_pid)
    ray.kill(old, no_restart=False)
    # A call made before the kill takes effect is answered by the old incarnation: ask until a new process answers.
    for _ in range(300):
        try:
            restarted = ray.get_actor(CONTROLLER_NAME)
            if await asyncio.wait_for(restarted.__ray_call__.remote(_pid), 5) != old_pid:
                break
        except Exception:
            pass
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("controller did not come back")
    listed = await asyncio.wait_for(restarted.list_adapters.remote(), 30)
    assert listed == before
    reps = await replica_adapters(restarted)
    assert all("kept" in a for a in reps.values())


async def wait_for_ready(controller, n: int, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (await controller.replica_counts.remote("base"))["ready"] < n:
        assert loop.time() < deadline, f"{n} ready replicas not reached in {timeout_s} s"
        await asyncio.sleep(0.2)


ADMIN, TENANT, LIMITED = new_key(), new_key(), new_key()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def authed_router(cluster, tmp_path_factory):
    """A second router with auth on, whose admin routes go to the controller."""
    keys = write_keys(
        tmp_path_factory.mktemp("keys") / "keys.yaml",
        {ADMIN: "ops", TENANT: "team", LIMITED: "narrow"},
        {"ops": {"admin": True}, "team": {}, "narrow": {"models": ["base"]}},
    )
    cfg = load_config(overrides=[*OVERRIDES, f"router.auth={{enabled: true, key_file: {keys}}}"])
    controller = get_or_create_controller(cfg)
    r = Router(cfg.router, controller_source(controller, timeout_s=5), admin=ControllerAdmin(controller))
    await r.start()
    await wait_for(lambda: len(r.replicas.by_model.get("base", [])) >= 2, 30, "replicas")
    yield r
    await r.stop(0.5)


def client(router, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def chat(c: httpx.AsyncClient, model: str) -> httpx.Response:
    return await c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})


async def test_only_an_admin_key_loads_adapters_and_the_router_serves_them_at_once(authed_router):
    async with client(authed_router, TENANT) as c:
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "ops-made", "lora_path": "sim://ops-made"})
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    async with client(authed_router, ADMIN) as c:
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "ops-made", "lora_path": "sim://ops-made"})
        assert r.status_code == 200 and "ops-made" in r.text
        assert (await chat(c, "ops-made")).status_code == 200
        cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
        assert cards["ops-made"]["parent"] == "base" and cards["base"]["parent"] is None
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
        assert (await c.post("/v1/unload_lora_adapter", json={"lora_name": "ops-made"})).status_code == 200
        r = await chat(c, "ops-made")
        assert r.status_code == 404 and "ops-made" in r.json()["error"]["message"]


async def test_a_tenants_allow_list_refuses_other_models_and_adapters_with_403(authed_router):
    async with client(authed_router, LIMITED) as c:
        assert (await chat(c, "base")).status_code == 200
        r = await chat(c, "static-a")
        assert r.status_code == 403 and "static-a" in r.json()["error"]["message"]
    async with client(authed_router, TENANT) as c:
        assert (await chat(c, "static-a")).status_code == 200


async def test_lora_aware_routing_keeps_an_adapter_on_the_replica_holding_it(authed_router):
    router = authed_router
    before = {rid: h.routed for rid, h in router.replicas.by_id.items()}
    async with client(router, TENANT) as c:
        for _ in range(8):
            assert (await chat(c, "static-a")).status_code == 200
    sent = Counter({rid: h.routed - before.get(rid, 0) for rid, h in router.replicas.by_id.items()})
    assert sorted(sent.values()) == [0, 8], sent


async def test_the_lora_cli_loads_lists_and_unloads_through_the_router(authed_router):
    import os
    import sys

    cli = os.path.join(os.path.dirname(sys.executable), "llm-cluster")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), "LLM_CLUSTER_API_KEY": ADMIN}
    url = f"http://127.0.0.1:{authed_router.http_port}"

    async def run(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(cli, "lora", *argv, "--url", url, env=env, stdout=-1, stderr=-1)
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    assert (await run("load", "from-cli", "sim://from-cli"))[0] == 0
    code, out, _ = await run("list")
    assert code == 0 and "from-cli\tbase" in out
    assert (await run("unload", "from-cli"))[0] == 0
    code, _, err = await run("unload", "from-cli")
    assert code == 1 and "from-cli" in err


async def test_router_metrics_count_and_time_an_adapters_requests_under_its_own_name(authed_router):
    from prometheus_client import generate_latest

    async with client(authed_router, TENANT) as c:
        assert (await chat(c, "static-a")).status_code == 200
    text = generate_latest(authed_router.metrics.registry).decode()
    assert 'llm_cluster_router_requests_total{api="http",code="200",model="static-a"}' in text
    assert 'llm_cluster_router_time_to_first_token_seconds_count{model="static-a"}' in text


async def test_a_request_for_an_adapter_of_a_model_scaled_to_zero_waits_for_a_replica(cluster):
    # Scaled to zero, the base model still has its adapters: a request for one is demand (it waits for a
    # replica, counted where the autoscaler looks), not "no such model".
    controller, router = cluster
    await controller.set_replicas.remote("base", 0)
    await wait_for(lambda: not router.replicas.by_model.get("base"), 30, "base at zero replicas")
    assert router.replicas.adapters.get("static-a") == "base"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=60) as c:
        waiting = asyncio.create_task(chat(c, "static-a"))
        await wait_for(lambda: router.balancer.waiting_for_replica == 1, 10, "the adapter request waiting for a replica")
        await controller.set_replicas.remote("base", 2)
        resp = await waiting
    assert resp.status_code == 200, resp.text
    await wait_for_ready(controller, 2)
