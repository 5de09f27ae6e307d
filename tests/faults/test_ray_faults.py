"""Control-plane faults on a real three-node Ray cluster (``ray.cluster_utils.Cluster``), under load.

- The controller is killed (Ray restarts it): the deployment comes back as it
  was, desired counts included, without restarting any replica, and without
  leaking a placement group.
- A worker node is lost: streams on its replica migrate, new requests flow to
  the other replica, and the controller starts a replacement on a live node.

Each node has 2 CPUs and each sim replica asks for 2, so a replica fills a node
and placement is predictable.  The router runs in this process, fed by the
controller's watch, as `llm-cluster router` would be.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
import ray

from cluster.controller.controller import REPLICA_PREFIX
from cluster.router.app import Router
from tests.conftest import LOOPBACK, local_ray, start_deployment, start_ray_cluster, wait_for
from tests.faults.driver import judge, run_load

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.asyncio(loop_scope="module")]

OVERRIDES = [
    "models.0.name=sim",
    "models.0.engine=sim",
    "models.0.replicas=1",
    "models.0.num_cpus_per_shard=2",
    "models.0.engine_args={time_scale: 0.2}",
    *LOOPBACK,
    "router.policy=round_robin",
    "controller.health_check_interval_s=0.3",
    "controller.drain_timeout_s=10",
]


@pytest.fixture(scope="module")
def three_nodes():
    # A busy 2-core CI machine can starve a raylet's heartbeats for a while:
    # only the node this test removes should be declared dead.
    slack = {"health_check_failure_threshold": 20}
    c, workers = start_ray_cluster({"num_cpus": 2, "_system_config": slack}, [{"num_cpus": 2}, {"num_cpus": 2}])
    try:
        with local_ray("llm-cluster-faults", address=c.address):
            yield c, workers
    finally:
        c.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(three_nodes):
    _, controller, router = await start_deployment(OVERRIDES, ready=1, timeout_s=60)
    yield controller, router
    await router.stop(0.5)


async def ready_replicas(controller, n: int, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = await controller.status.remote()
        except ray.exceptions.ActorUnavailableError:  # restarting right now
            await asyncio.sleep(0.2)
            continue
        ready = [r for r in status["replicas"] if r["state"] == "READY"]
        if len(ready) == n and len(status["replicas"]) == n:
            return ready
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} ready replicas: {status}")
        await asyncio.sleep(0.2)


def live_replica_groups() -> set[str]:
    return {
        info["name"]
        for info in ray.util.placement_group_table().values()
        if info["name"].startswith(REPLICA_PREFIX) and info["state"] != "REMOVED"
    }


async def test_a_restarted_controller_recovers_the_deployment_without_restarting_replicas(deployment):
    controller, router = deployment
    await controller.set_replicas.remote("sim", 2)  # not the config's 1: an autoscaler's decision
    before = await ready_replicas(controller, 2)
    pids = {r["replica_id"]: (await ray.get_actor(REPLICA_PREFIX + r["replica_id"]).health.remote())["pid"] for r in before}
    assert live_replica_groups() == {REPLICA_PREFIX + rid for rid in pids}
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 2, 30)

    outcomes: list = []
    m0 = router.balancer.migrations
    load = asyncio.create_task(router_load(router, outcomes, requests=80))
    await asyncio.sleep(0.5)
    ray.kill(controller, no_restart=False)  # Ray restarts it (max_restarts=-1)
    await asyncio.sleep(1.0)
    after = await ready_replicas(controller, 2)
    status = await controller.status.remote()
    await load
    tally = await judge(outcomes, router.balancer.migrations - m0)
    print("\n" + tally.line("controller restarted"))

    assert status["models"]["sim"]["desired"] == 2  # restored, not reset to the config's 1
    assert {r["replica_id"] for r in after} == set(pids)  # the same replicas...
    for rid, pid in pids.items():  # ...in the same processes: nothing was restarted
        assert (await ray.get_actor(REPLICA_PREFIX + rid).health.remote())["pid"] == pid
    for rid in pids:  # their placement groups were adopted
        assert (await controller.placement.remote(rid))["bundles"]
    assert tally.lost == 0 and tally.completed == tally.sent, (tally.lost_examples, tally.errors[:5])

    # Killed again in the middle of a scale-down: the next incarnation finishes
    # draining the replica that was draining, stops it, and no group leaks.
    outcomes = []
    # Streams of ~2 s, so the drain is still waiting for them when the controller dies.
    load = asyncio.create_task(router_load(router, outcomes, requests=24, max_tokens=250))
    await wait_for(lambda: all(h.in_flight for h in router.replicas.by_model["sim"]), 10)
    await controller.set_replicas.remote("sim", 1)
    await asyncio.sleep(0.8)  # past the drain grace: one replica is draining its streams now
    ray.kill(controller, no_restart=False)
    (left,) = await ready_replicas(controller, 1)
    await load
    tally = await judge(outcomes, 0)
    print(tally.line("controller restarted while draining"))
    assert tally.lost == 0 and tally.completed == tally.sent, (tally.lost_examples, tally.errors[:5])
    assert (await controller.status.remote())["models"]["sim"]["desired"] == 1
    await wait_for(lambda: live_replica_groups() == {REPLICA_PREFIX + left["replica_id"]}, 30)


async def router_load(router: Router, outcomes: list, requests: int, max_tokens: int = 40) -> None:
    await run_load(
        router.grpc_port, router.http_port, concurrency=6, requests=requests, max_tokens=max_tokens, deadline_s=30, progress=outcomes
    )


async def test_losing_a_worker_node_reschedules_its_replica_while_traffic_flows_to_the_other(deployment, three_nodes):
    controller, router = deployment
    cluster, workers = three_nodes
    await controller.set_replicas.remote("sim", 2)
    replicas = await ready_replicas(controller, 2)
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 2, 30)
    by_node = {w.node_id: w for w in workers}
    victim = next(r for r in replicas if r["node_id"] in by_node)  # at most one replica fits the head node
    survivor = next(r for r in replicas if r is not victim)
    victim_handle = router.replicas.by_id[victim["replica_id"]]

    outcomes: list = []
    m0 = router.balancer.migrations
    load = asyncio.create_task(router_load(router, outcomes, requests=80))
    await wait_for(lambda: victim_handle.in_flight >= 2, 30)
    await asyncio.sleep(0.1)  # past their first tokens
    cluster.remove_node(by_node[victim["node_id"]])
    lost_at = time.monotonic()
    await wait_for(lambda: victim["replica_id"] not in router.replicas.by_id, 30)
    left_set_s = time.monotonic() - lost_at
    await load
    after = await ready_replicas(controller, 2, timeout_s=90)
    replaced_s = time.monotonic() - lost_at
    tally = await judge(outcomes, router.balancer.migrations - m0)
    print("\n" + tally.line("worker node lost") + f" (left the endpoint set after {left_set_s:.1f} s, replaced after {replaced_s:.1f} s)")

    assert tally.lost == 0, tally.lost_examples
    assert tally.refused == tally.failed == 0, tally.errors[:5]  # migrated or retried onto the survivor
    assert tally.migrated >= 1
    new = [r for r in after if r["replica_id"] != survivor["replica_id"]]
    assert len(new) == 1 and new[0]["replica_id"] != victim["replica_id"]
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert new[0]["node_id"] in alive and new[0]["node_id"] != victim["node_id"]
    await wait_for(lambda: len(router.replicas.by_model.get("sim", [])) == 2, 30)
    assert live_replica_groups() == {REPLICA_PREFIX + r["replica_id"] for r in after}
