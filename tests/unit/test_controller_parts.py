"""The controller's parts that need no Ray: per-node slots, the endpoint watch, per-model state, replica records."""

from __future__ import annotations

import asyncio

import pytest

from cluster.config import ModelConfig
from cluster.controller.discovery import EndpointWatch, endpoint_set
from cluster.controller.replica import Replica, ReplicaState
from cluster.controller.slots import ReplicaSlots, SlotAllocator, cpu_binding
from cluster.controller.state import ModelState


def test_a_freed_slot_is_the_next_one_given_on_that_node_and_nodes_count_apart():
    slots = SlotAllocator()
    assert [slots.take("a"), slots.take("a"), slots.take("a")] == [0, 1, 2]
    assert slots.take("b") == 0
    slots.release("a", 1)
    assert slots.take("a") == 1
    assert slots.take("a") == 3
    slots.release("a", None)  # a replica that never held a slot
    assert slots.used("a") == {0, 1, 2, 3}


def test_cpu_replicas_in_consecutive_slots_get_disjoint_cores_until_the_node_runs_out():
    model = ModelConfig(engine="vllm", tensor_parallel_size=2, num_cpus_per_shard=2)
    bindings = [cpu_binding(slot, model, node_cpus=8) for slot in range(3)]
    assert bindings[:2] == ["0,1|2,3", "4,5|6,7"]
    assert bindings[2] == bindings[0]  # wraps round the node's 8 cores


def test_a_vllm_cpu_replica_gets_cores_and_a_port_a_sim_one_only_a_port_and_both_come_back(monkeypatch):
    monkeypatch.setattr("cluster.controller.slots.node_cpus", lambda node: 4)
    slots = ReplicaSlots(metrics_base_port=9500)
    vllm, sim = Replica("v-1", "v", node_id="n"), Replica("s-1", "s", node_id="n")
    env, port = slots.assign(vllm, ModelConfig(name="v", engine="vllm", num_cpus_per_shard=2))
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], port) == ("0,1", 9500)
    env, port = slots.assign(sim, ModelConfig(name="s", engine="sim", env={"X": "1"}))
    assert (env, port, sim.cpu_slot) == ({"X": "1"}, 9501, None)
    slots.release(vllm)
    slots.release(vllm)  # a second cleanup frees nothing another replica holds
    assert (slots.cpu.used("n"), slots.metrics.used("n")) == (set(), {1})
    assert ReplicaSlots(metrics_base_port=0).assign(Replica("s-2", "s"), ModelConfig(name="s", engine="sim"))[1] == 0


async def test_a_watcher_wakes_when_the_set_changes_and_not_before():
    watch = EndpointWatch()
    v = watch.version
    waiter = asyncio.create_task(watch.wait_past(v, timeout_s=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    watch.bump()
    await asyncio.wait_for(waiter, 1)
    assert watch.version == v + 1


async def test_a_version_from_an_earlier_controller_is_answered_at_once_and_an_unchanged_one_times_out():
    watch = EndpointWatch()
    await asyncio.wait_for(watch.wait_past(watch.version + 1000, timeout_s=5), 0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await watch.wait_past(watch.version, timeout_s=0.1)
    assert loop.time() - t0 >= 0.09


def test_only_ready_replicas_with_an_address_are_endpoints_sorted_by_id():
    reps = [
        Replica("m-b", "m", state=ReplicaState.READY, address="h:2", max_model_len=64),
        Replica("m-a", "m", state=ReplicaState.READY, address="h:1", metrics_address="h:9"),
        Replica("m-c", "m", state=ReplicaState.DRAINING, address="h:3"),
        Replica("m-d", "m", state=ReplicaState.READY),
    ]
    eps = endpoint_set(["m", "other"], reps)
    assert eps["other"] == []
    assert [e["replica_id"] for e in eps["m"]] == ["m-a", "m-b"]
    assert eps["m"][0]["metrics_address"] == "h:9" and "metrics_address" not in eps["m"][1]
    assert eps["m"][1]["max_model_len"] == "64"


@pytest.mark.parametrize(("saved", "desired"), [({"desired": 5}, 5), (4, 4), ({"desired": -1}, 2), ("x", 2), ({"desired": True}, 2)])
def test_saved_model_state_is_restored_and_a_malformed_one_is_ignored(saved, desired):
    m = ModelState.from_config(ModelConfig(name="m", engine="sim", replicas=2))
    m.restore(saved)
    assert m.desired == desired


async def test_a_replica_holds_its_tasks_until_they_finish_and_is_forgotten_only_then():
    r = Replica("m-a", "m", state=ReplicaState.STOPPED)
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()

    task = r.spawn(work(), "drain")
    assert r.tasks == {task}
    assert not r.forgettable
    gate.set()
    await task
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert r.tasks == set()
    assert r.forgettable
