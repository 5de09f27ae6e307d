"""The controller on a real local Ray cluster with sim replicas.

Covers what the controller owns: starting replicas in placement groups,
publishing the endpoint set, replacing a killed replica (while the router stops
sending it traffic), and scaling up and down with drain and no lost request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import openai
import pytest
import pytest_asyncio
import ray

from tests.conftest import LOOPBACK, local_ray, start_deployment, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]

OVERRIDES = [
    "models.0.name=sim",
    "models.0.engine=sim",
    "models.0.replicas=2",
    "models.0.engine_args={time_scale: 0.1}",
    *LOOPBACK,
    "router.policy=round_robin",
    "controller.health_check_interval_s=0.3",
    "controller.health_check_timeout_s=3",
    "controller.health_check_failures=2",
    "controller.drain_timeout_s=20",
]


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray("llm-cluster-test"):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(ray_cluster):
    _, controller, router = await start_deployment(OVERRIDES, ready=2)
    yield controller, router
    await router.stop(0.5)


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)


async def test_load_spreads_across_the_controllers_replicas(cluster):
    controller, router = cluster
    before = {rid: h.routed for rid, h in router.replicas.by_id.items()}
    await asyncio.gather(*(oai(router).completions.create(model="sim", prompt=f"q{i}", max_tokens=3) for i in range(20)))
    delta = [h.routed - before.get(rid, 0) for rid, h in router.replicas.by_id.items()]
    assert sorted(delta) == [10, 10]
    # Tokens came over each replica's relay stream, at the address the controller published.
    _, eps, _ = await controller.watch.remote(0, 1.0)
    relays = {ep["replica_id"]: ep["relay_address"] for ep in eps["sim"]}
    assert {rid: f"{h.relay.host}:{h.relay.port}" for rid, h in router.replicas.by_id.items() if h.relay} == relays
    status = await controller.status.remote()
    assert status["models"]["sim"] == {"engine": "sim", "desired": 2, "ready": 2, "max_model_len": 2048}
    assert {r["state"] for r in status["replicas"]} == {"READY"}


def _nice(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])


@ray.remote
def _worker_pid() -> int:
    return os.getpid()


async def test_replicas_run_at_nice_zero_on_a_ray_cluster_started_with_rays_default_worker_niceness(cluster):
    # A Ray cluster started as Ray starts it (this test's own, like a user's `ray start`) runs its workers at
    # nice 15; a replica's engine processes inherit its nice, so the replica brings itself back to 0.
    _, router = cluster
    assert _nice(await _worker_pid.remote()) > 0  # the premise: an ordinary Ray worker of this cluster
    for replica_id in router.replicas.by_id:
        pid = (await ray.get_actor(f"llm-cluster-replica-{replica_id}").health.remote())["pid"]
        assert _nice(pid) == 0, replica_id


async def test_a_killed_replica_is_replaced_and_traffic_avoids_it_meanwhile(cluster):
    _, router = cluster
    client = oai(router)
    victim_id = sorted(router.replicas.by_id)[0]
    victim = ray.get_actor(f"llm-cluster-replica-{victim_id}")
    results: list[object] = []

    async def traffic() -> None:
        for i in range(60):
            try:
                r = await client.completions.create(model="sim", prompt=f"k{i}", max_tokens=2)
                results.append(r.usage.completion_tokens)
            except openai.APIError as exc:
                results.append(exc)
            await asyncio.sleep(0.03)

    task = asyncio.create_task(traffic())
    await asyncio.sleep(0.2)
    ray.kill(victim, no_restart=True)
    await wait_for(lambda: victim_id not in router.replicas.by_id, 10)
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 2, 30)
    await task
    assert victim_id not in router.replicas.by_id
    errors = [r for r in results if not isinstance(r, int)]
    assert errors == [], errors  # requests that hit the dead replica were retried elsewhere
    assert len(results) == 60


async def _frozen_for(replica_id: str, seconds: float, until=None) -> int:
    """SIGSTOP the replica's actor process for ``seconds`` (or until ``until()``), then SIGCONT; its pid."""
    pid = (await ray.get_actor(f"llm-cluster-replica-{replica_id}").health.remote())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        if until is None:
            await asyncio.sleep(seconds)
        else:
            await wait_for(until, seconds, "the frozen replica's removal")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # replaced (killed) meanwhile
            pass
    return pid


async def test_a_replica_busy_for_longer_than_the_check_interval_but_within_the_timeout_is_kept(cluster):
    # A loaded machine stalls a process now and then; a stall of several check intervals is not a death.
    _, router = cluster
    victim_id = sorted(router.replicas.by_id)[0]
    pid = await _frozen_for(victim_id, 1.5)
    await asyncio.sleep(3.5)  # more than one timeout: a check that failed would have been counted by now
    assert victim_id in router.replicas.by_id
    assert (await ray.get_actor(f"llm-cluster-replica-{victim_id}").health.remote())["pid"] == pid


async def test_a_replica_frozen_past_its_health_checks_is_replaced(cluster):
    _, router = cluster
    victim_id = sorted(router.replicas.by_id)[0]
    started = time.monotonic()
    await _frozen_for(victim_id, 30, until=lambda: victim_id not in router.replicas.by_id)
    gone_s = time.monotonic() - started
    assert gone_s >= 3, f"replaced after {gone_s:.1f} s, before one health check could time out"
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 2, 30)


async def test_scale_up_then_down_drains_and_loses_no_request(cluster):
    controller, router = cluster
    client = oai(router)
    await controller.set_replicas.remote("sim", 4)
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 4, 30)
    # Long requests (~60 decode steps) in flight on every replica while we scale down.
    tasks = [asyncio.create_task(client.completions.create(model="sim", prompt=f"d{i}", max_tokens=60)) for i in range(16)]
    await asyncio.sleep(0.3)
    await controller.set_replicas.remote("sim", 1)
    # New requests keep arriving during the drain.
    later = [await client.completions.create(model="sim", prompt=f"n{i}", max_tokens=2) for i in range(10) if not await asyncio.sleep(0.05)]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(d).__name__ for d in done if not hasattr(d, "usage")] == []
    assert all(d.usage.completion_tokens == 60 for d in done)
    assert all(r.usage.completion_tokens == 2 for r in later)
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 1, 30)
    status = await controller.status.remote()
    assert status["models"]["sim"]["ready"] == 1
    await controller.set_replicas.remote("sim", 2)
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 2, 30)
