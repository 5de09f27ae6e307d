"""The LoRA-aware policy: an adapter's requests stay on replicas holding it, under the bounded-load cap."""

from __future__ import annotations

import random
import time
from collections import Counter

from cluster.config import LoraAwareOptions
from cluster.router.policies import RouteRequest
from cluster.router.policies.lora_aware import LoraAware
from tests.policy_fakes import FakeReplica, fleet, report, start


def holds(h: FakeReplica, *adapters: str) -> None:
    """A fresh load report from ``h`` listing ``adapters`` as active (the field the replica's report carries)."""
    report(h)
    h.load.active_adapters.extend(adapters)  # type: ignore[union-attr]
    h.load_at = time.monotonic()


def req(k: int, adapter: str | None, prompt: str = "hello") -> RouteRequest:
    return RouteRequest(model="m", request_id=str(k), prompt=prompt, adapter=adapter)


def test_an_adapters_requests_go_to_the_replica_whose_report_shows_it_active() -> None:
    reps = fleet(4)
    holds(reps[2], "a")
    policy = LoraAware(rng=random.Random(0))
    picks = {policy.choose(reps, req(i, "a")).replica_id for i in range(20)}
    assert picks == {"r2"}


def test_a_burst_for_a_new_adapter_sticks_to_one_replica_before_any_report_shows_it() -> None:
    reps = fleet(4)
    policy = LoraAware(rng=random.Random(1))
    first = policy.choose(reps, req(0, "new"))
    r = req(1, "new")
    assert policy.choose(reps, r) is first and r.outcome == "adapter_hit"


def test_adapters_spread_over_replicas_instead_of_crowding_one() -> None:
    reps = fleet(4)
    policy = LoraAware(rng=random.Random(2))
    homes = Counter(policy.choose(reps, req(i, f"t{i}")).replica_id for i in range(8))
    assert sorted(homes.values()) == [2, 2, 2, 2]


def test_a_hot_adapter_spills_to_another_replica_past_the_load_cap() -> None:
    reps = fleet(4)
    holds(reps[0], "hot")
    policy = LoraAware(LoraAwareOptions(balance_eps=0.5), rng=random.Random(3))
    outcomes = Counter()
    used = set()
    for i in range(12):
        r = req(i, "hot")
        h = policy.choose(reps, r)
        start(h)  # requests stay in flight
        used.add(h.replica_id)
        outcomes[r.outcome] += 1
    assert outcomes["adapter_spill"] > 0 and len(used) > 1
    assert max(h.in_flight for h in reps) <= 6  # ceil(1.5 x (11 + 1) / 4) = 5, +1 for the last pick


def test_base_model_requests_are_routed_as_by_prefix_affinity() -> None:
    reps = fleet(3)
    policy = LoraAware(rng=random.Random(4))
    prompt = "system " * 200
    first = policy.choose(reps, req(0, None, prompt))
    r = req(1, None, prompt)
    assert policy.choose(reps, r) is first and r.outcome == "prefix_hit"


def test_a_stale_replica_is_not_counted_as_holding_the_adapter() -> None:
    reps = fleet(2)
    holds(reps[0], "a")
    reps[0].load_at = time.monotonic() - 5  # its report is stale
    policy = LoraAware(rng=random.Random(5))
    r = req(0, "a")
    assert policy.choose(reps, r).replica_id == "r1" and r.outcome == "adapter_miss"
