import random
from collections import Counter

import pytest

from cluster.router.policies import POLICIES, RouteRequest, make_policy
from cluster.router.policies.power_of_two import PowerOfTwo
from cluster.router.policies.round_robin import RoundRobin
from tests.policy_fakes import fake, fleet, report

REQ = RouteRequest(model="m", request_id="r")


def test_round_robin_visits_every_replica_once_per_cycle():
    reps = [fake(f"r{i}") for i in range(4)]
    policy = RoundRobin()
    picks = [policy.choose(reps, REQ).replica_id for _ in range(12)]
    assert Counter(picks) == {f"r{i}": 3 for i in range(4)}
    assert picks[:4] == ["r0", "r1", "r2", "r3"]


def test_round_robin_keeps_a_separate_rotation_per_model():
    reps = [fake("a"), fake("b")]
    policy = RoundRobin()
    assert policy.choose(reps, RouteRequest("m1", "x")).replica_id == "a"
    assert policy.choose(reps, RouteRequest("m2", "x")).replica_id == "a"
    assert policy.choose(reps, RouteRequest("m1", "x")).replica_id == "b"


def test_power_of_two_never_picks_the_busier_of_its_two_samples():
    reps = [fake("idle", 0), fake("busy", 10)]
    policy = PowerOfTwo(random.Random(1))
    assert {policy.choose(reps, REQ).replica_id for _ in range(50)} == {"idle"}


def test_power_of_two_keeps_load_even_when_each_pick_adds_load():
    reps = [fake(f"r{i}") for i in range(8)]
    policy = PowerOfTwo(random.Random(7))
    for _ in range(800):
        policy.choose(reps, REQ).in_flight += 1
    loads = [r.in_flight for r in reps]
    # mean 100; two-choices keeps the spread tiny (random choice would be ~±30)
    assert max(loads) - min(loads) <= 3, loads


def test_power_of_two_with_one_candidate_returns_it():
    only = fake("only", 99)
    assert PowerOfTwo().choose([only], REQ) is only


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown policy 'fastest'") as err:
        make_policy("fastest")
    assert all(name in str(err.value) for name in POLICIES)
    assert set(POLICIES) == {"round_robin", "power_of_two", "prefix_aware", "session_affinity", "least_kv", "weighted", "lora_aware"}


def test_every_registered_policy_builds_itself_from_default_options_and_carries_its_name():
    for name, cls in POLICIES.items():
        policy = make_policy(name, rng=random.Random(0))
        assert type(policy) is cls and policy.name == name
        assert policy.choose(fleet(3), RouteRequest("m", "x", prompt="hello")) is not None


def test_power_of_two_prefers_a_fresh_replica_to_a_stale_idle_one():
    reps = fleet(2)
    stale, fresh = reps
    report(stale, age_s=5.0)  # no report for 5 s: may be hung
    fresh.in_flight = 10
    policy = PowerOfTwo(random.Random(3))
    assert {policy.choose(reps, REQ).replica_id for _ in range(50)} == {fresh.replica_id}


def test_power_of_two_prefers_a_replica_whose_circuit_is_closed():
    import time

    reps = fleet(2)
    reps[0].ejected_until = time.monotonic() + 60
    policy = PowerOfTwo(random.Random(4))
    assert {policy.choose(reps, REQ).replica_id for _ in range(50)} == {"r1"}
