"""The autoscaler end to end: a real Prometheus (started here, on loopback, scrape interval 1 s) scrapes a
sim cluster on a local Ray (controller, replicas found through the controller's /sd/replicas, router);
the load generator sends a load step; the autoscaler (Prometheus source -> target tracking -> Ray actuator)
adds replicas, and removes them when the load drops, with no failed request either way.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import pytest_asyncio
import ray

from cluster.autoscaler.actuators.ray import RayActuator
from cluster.autoscaler.build import build_autoscaler, controller_discovery
from cluster.autoscaler.sources.scrape import ScrapeSource
from loadtests.clients.grpc_api import GrpcClient
from loadtests.openloop import open_loop
from loadtests.workloads import RequestSpec
from tests.conftest import LOOPBACK, local_ray, start_deployment, wait_for
from tests.prometheus_server import query, running_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]

TARGET = 4.0  # waiting + running requests per replica
OVERRIDES = [
    "models.0.name=sim",
    "models.0.engine=sim",
    "models.0.replicas=1",
    "models.0.engine_args={time_scale: 1.0}",
    *LOOPBACK,
    "controller.health_check_interval_s=0.5",
    "controller.drain_timeout_s=20",
    "autoscaler.model=sim",
    "autoscaler.interval_s=1",
    f"autoscaler.policy.target={TARGET}",
    "autoscaler.policy.min_replicas=1",
    "autoscaler.policy.max_replicas=4",
    "autoscaler.policy.scale_up_window_s=2",  # a Poisson burst of the low phase must not add a replica
    "autoscaler.policy.scale_down_window_s=6",
    "autoscaler.policy.cooldown_s=4",
    "autoscaler.policy.ttft_slo_s=null",
    "autoscaler.source.stale_after_s=10",
    "autoscaler.source.rate_window=10s",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_config(router_port: int, controller_port: int) -> str:
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: router
    static_configs: [{{targets: ["127.0.0.1:{router_port}"]}}]
  - job_name: controller
    static_configs: [{{targets: ["127.0.0.1:{controller_port}"]}}]
  - job_name: replicas
    http_sd_configs: [{{url: "http://127.0.0.1:{controller_port}/sd/replicas", refresh_interval: 1s}}]
"""


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray("llm-cluster-autoscale-test"):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(ray_cluster):
    cfg, controller, router = await start_deployment(OVERRIDES, ready=1)
    yield cfg, controller, router
    await router.stop(0.5)


@pytest.fixture(scope="module")
def prometheus(cluster):
    _cfg, controller, router = cluster
    controller_port = ray.get(controller.status.remote())["metrics_port"]
    with running_prometheus(prometheus_config(router.metrics_port, controller_port)) as url:
        yield url


async def test_a_load_step_adds_ray_replicas_and_removing_them_fails_no_request(cluster, prometheus):
    cfg, controller, router = cluster
    cfg.autoscaler.source.prometheus_url = prometheus
    scaler = build_autoscaler(cfg, actuator=RayActuator(controller, "sim"))
    # Prometheus must see the replica (found through /sd/replicas) before the loop may act on it.
    for _ in range(100):
        if await query(prometheus, 'vllm:num_requests_running{model="sim"}'):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("prometheus never scraped the replica found through /sd/replicas")

    stop = asyncio.Event()
    loop_task = asyncio.create_task(scaler.run(stop))
    ready_seen: list[int] = []

    async def watch_ready() -> None:
        while not stop.is_set():
            ready_seen.append(len(router.replicas.by_model.get("sim", [])))
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch_ready())
    client = GrpcClient(f"127.0.0.1:{router.grpc_port}")
    await client.open()
    spec = lambda i: RequestSpec(prompt=f"request {i} " + "word " * 40, prompt_tokens=42, output_tokens=16)  # noqa: E731
    try:
        # ~0.7 s per request: 20/s keeps ~14 in flight (4 replicas' worth at 4 each), 1.5/s about 1.
        high = await open_loop(client, "sim", rate=20, duration_s=20, spec=spec, timeout_s=30, seed=1)
        peak = max(ready_seen)
        low = await open_loop(client, "sim", rate=1.5, duration_s=25, spec=spec, timeout_s=30, seed=2)
        await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 1, 40)
        counts = await controller.replica_counts.remote("sim")
    finally:
        stop.set()
        await loop_task
        await watcher
        await client.close()
        await scaler.close()

    failed = [(r.error, r.error_detail) for r in high + low if not r.ok]
    assert failed == [], failed[:5]
    assert len(high) > 200 and len(low) > 10
    assert peak >= 3, f"ready replicas seen: {sorted(set(ready_seen))}"
    assert counts == {"desired": 1, "ready": 1}
    actions = [(d.action, d.reason) for d in scaler.decisions if d.action != "hold"]
    assert ("scale_up", "target_tracking") in actions
    assert ("scale_down", "target_tracking") in actions
    ups = [d for d in scaler.decisions if d.action == "scale_up"]
    assert all(d.desired <= 4 for d in ups)
    # Every decision is exported: the autoscaler's own registry counted them by action and reason.
    from prometheus_client import generate_latest

    text = generate_latest(scaler.metrics.registry).decode()
    assert 'llm_cluster_autoscaler_decisions_total{action="scale_up",model="sim",reason="target_tracking"}' in text
    # The controller's figures reached Prometheus too.
    for _ in range(50):
        desired = await query(prometheus, 'llm_cluster_controller_desired_replicas{model="sim"}')
        if desired and float(desired[0]["value"][1]) == 1:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"prometheus never saw the controller's desired count go back to 1: {desired}")


async def test_the_direct_scrape_fallback_finds_the_replicas_through_the_controller(cluster):
    _cfg, controller, router = cluster
    source = ScrapeSource(discover=controller_discovery(controller), router_url=f"http://127.0.0.1:{router.metrics_port}/metrics")
    try:
        obs = await source.observe("sim")
    finally:
        await source.close()
    ready = len(router.replicas.by_model.get("sim", []))
    assert obs.reporting_replicas == ready >= 1
    assert obs.known_replicas == ready
    assert obs.load == 0 and obs.demand == 0
