"""A CPU replica keeps its unbound threads off the cores its node's vLLM engines are bound to, when it can."""

import os
import subprocess
import sys

import pytest

from cluster.replica.cpu_affinity import CpuAffinity, engine_bindings, others_cores, thread_mask


def test_a_lone_replica_on_two_cores_leaves_the_engine_core_to_the_engine():
    assert others_cores({0, 1}, [{0}]) == {1}


def test_the_rest_of_a_larger_node_is_shared_by_everything_else():
    assert others_cores({0, 1, 2, 3}, [{0}, {1}]) == {2, 3}
    assert others_cores({0, 1, 2, 3, 4, 5, 6, 7}, [{0, 1}, {2, 3}]) == {4, 5, 6, 7}


def test_when_the_engines_hold_every_core_nothing_is_moved():
    assert others_cores({0, 1}, [{0}, {1}]) is None
    assert others_cores({0, 1}, [{0, 1}]) is None
    assert others_cores({0}, [{0}]) is None


def test_with_no_engine_bound_on_the_node_nothing_is_moved():
    assert others_cores({0, 1}, []) is None
    assert others_cores({2, 3}, [{0}]) is None  # bound outside the cores this replica may use


def test_an_engine_thread_keeps_its_binding_and_the_rest_move():
    usable = {0, 1, 2, 3}
    assert thread_mask({0}, True, {2, 3}, usable, None) is None  # the worker's OpenMP thread
    assert thread_mask(usable, True, {2, 3}, usable, None) == {2, 3}  # a worker thread vLLM did not bind
    assert thread_mask(usable, False, {2, 3}, usable, None) == {2, 3}  # the front end, the engine core, Ray
    assert thread_mask({2, 3}, False, {2, 3}, usable, {2, 3}) is None  # already there


def test_a_thread_someone_else_placed_is_left_alone():
    assert thread_mask({3}, False, {2, 3}, {0, 1, 2, 3}, None) is None  # e.g. a `taskset` of the user's
    assert thread_mask({1}, False, None, {0, 1}, None) is None  # nothing to give back: it was not ours


def test_threads_moved_earlier_get_every_core_back_when_no_spare_one_is_left():
    # A second replica took core 1: what the first placement kept on {1} may run anywhere again.
    assert thread_mask({1}, False, None, {0, 1}, {1}) == {0, 1}
    # More engines, fewer spare cores: what was placed moves to what is left.
    assert thread_mask({1, 2, 3}, False, {2, 3}, {0, 1, 2, 3}, {1, 2, 3}) == {2, 3}


def _spawn(title: str | None, cores: set[int]) -> subprocess.Popen:
    code = "import os, sys, time\n"
    if title:
        code += f"open('/proc/self/comm', 'w').write({title!r})\n"
    code += f"os.sched_setaffinity(0, {sorted(cores)!r})\nprint('ready', flush=True)\ntime.sleep(60)\n"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_a_replica_process_moves_off_a_real_bound_worker_core_and_the_worker_keeps_it():
    usable = set(os.sched_getaffinity(0))
    engine_core = min(usable)
    worker = _spawn("VLLM::Worker", {engine_core})
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands for the engine core
    try:
        bindings = engine_bindings(usable)  # other engines on a shared machine count too
        assert {engine_core} in bindings
        others = others_cores(usable, bindings)
        assert others is None or engine_core not in others
        CpuAffinity(usable).refresh(force=True)  # this process and its children: the helper and the worker
        assert os.sched_getaffinity(0) == (others or usable)
        assert os.sched_getaffinity(helper.pid) == (others or usable)
        assert os.sched_getaffinity(worker.pid) == {engine_core}
    finally:
        os.sched_setaffinity(0, usable)
        for p in (worker, helper):
            p.kill()
            p.wait()
