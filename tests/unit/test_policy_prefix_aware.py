import random
import tracemalloc

from cluster.config import PrefixAwareOptions
from cluster.router.policies import RouteRequest, make_policy
from cluster.router.policies.prefix_aware import PrefixAware
from tests.policy_fakes import fleet, report, start, system_prompt


def req(prompt: str, rid: str = "x") -> RouteRequest:
    return RouteRequest(model="m", request_id=rid, prompt=prompt)


def test_the_same_prefix_goes_to_the_same_replica_and_others_spread():
    reps = fleet(4)
    policy = PrefixAware(rng=random.Random(1))
    homes = {}
    for g in range(4):
        r = req(system_prompt(g) + " first question")
        homes[g] = policy.choose(reps, r)
        assert r.outcome == "prefix_miss"
    for turn in range(5):
        for g in range(4):
            r = req(system_prompt(g) + f" question number {turn} of group {g}")
            assert policy.choose(reps, r) is homes[g]
            assert r.outcome == "prefix_hit"


def test_a_longer_match_beats_a_shorter_one():
    reps = fleet(3)
    policy = PrefixAware(rng=random.Random(2))
    base = system_prompt(7, 3000)
    short_home = policy.choose(reps, req(base[:1000]))
    retry = req(base)
    retry.attempt = 1  # as on a retry: the candidates exclude the replica tried first
    long_home = policy.choose([r for r in reps if r is not short_home], retry)
    assert long_home is not short_home
    assert policy.choose(reps, req(base + " more")) is long_home


def test_a_hot_prefix_spills_over_when_its_replica_is_over_the_load_bound():
    reps = fleet(4)
    policy = PrefixAware(PrefixAwareOptions(balance_eps=0.5), rng=random.Random(3))
    prompt = system_prompt(1)
    home = policy.choose(reps, req(prompt))
    start(home)
    outcomes = []
    for i in range(40):  # none finishes: every pick adds load
        r = req(prompt + f" q{i}")
        h = policy.choose(reps, r)
        start(h)
        outcomes.append(r.outcome)
    mean = sum(r.in_flight for r in reps) / len(reps)
    assert max(r.in_flight for r in reps) <= 1.5 * (mean + 1) + 1
    assert "spill_over" in outcomes
    # The replicas it spilled to now hold the prefix too.
    assert sum(1 for r in reps if policy.index.entries(r)) >= 2


def test_a_stale_replica_is_avoided_even_when_it_holds_the_prefix():
    reps = fleet(2)
    policy = PrefixAware(rng=random.Random(4))
    prompt = system_prompt(2)
    home = policy.choose(reps, req(prompt))
    report(home, age_s=5.0)  # stopped reporting
    for i in range(10):
        r = req(prompt + f" {i}")
        assert policy.choose(reps, r) is not home


def test_an_ejected_or_removed_replica_is_not_chosen_from_the_index():
    reps = fleet(3)
    policy = PrefixAware(rng=random.Random(5))
    prompt = system_prompt(3)
    home = policy.choose(reps, req(prompt))
    home.removed = True
    others = [r for r in reps if r is not home]
    assert policy.choose(others, req(prompt)) is not home
    assert policy.index.entries(home) == 0  # purged when met


def test_index_memory_stays_under_its_bound_under_unique_prompts():
    reps = fleet(4, kv_capacity_tokens=16 * 1024)  # 16k tokens -> 512 blocks of 128 chars per replica
    opts = PrefixAwareOptions()
    policy = PrefixAware(opts, rng=random.Random(6))
    cap = policy.index.capacity(reps[0])
    assert cap == 16 * 1024 // (opts.block_chars // 4)
    rng = random.Random(0)

    def unique(i: int) -> str:
        return " ".join(f"{rng.random():.12f}" for _ in range(120)) + f" {i}"

    for i in range(300):  # warm up, then measure growth
        policy.choose(reps, req(unique(i)))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(300, 3300):
        policy.choose(reps, req(unique(i)))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    for r in reps:
        assert policy.index.entries(r) <= cap
    assert policy.index.distinct_blocks <= 4 * cap
    # Bounded: 3,000 more unique prompts (about 33k blocks) grew memory by less
    # than what the bound itself allows, far less than an unbounded index.
    assert grown < 4 * cap * 400, grown


def test_prefix_aware_is_selectable_by_name_with_its_options():
    opts_policy = make_policy("prefix_aware")
    assert isinstance(opts_policy, PrefixAware)


def test_a_prefix_held_by_hundreds_of_replicas_is_looked_up_in_bounded_work():
    reps = fleet(500)
    policy = PrefixAware(rng=random.Random(7))
    hashes = policy.index.hashes(system_prompt(9))
    for h in reps:
        policy.index.record(h, hashes)
    found = policy.index.matches(hashes)
    assert 1 <= len(found) <= 3 * 16
    assert all(d == len(hashes) for d in found.values())


def test_the_whole_index_is_capped_whatever_the_replica_count():
    reps = fleet(50, kv_capacity_tokens=10**9)  # huge KV caches: the per-model cap decides
    policy = PrefixAware(PrefixAwareOptions(max_index_entries=5_000), rng=random.Random(8))
    for i in range(2_000):
        policy.choose(reps, req(f"unique {i} " + system_prompt(i, 1500)))
    assert policy.index.entries() <= 5_000
    assert all(policy.index.entries(h) <= 100 for h in reps)


def test_sim_token_blocks_route_a_shared_prefix_like_text_blocks():
    reps = fleet(4)
    policy = PrefixAware(PrefixAwareOptions(hash_unit="sim_tokens"), rng=random.Random(9))
    home = policy.choose(reps, req(system_prompt(4) + " first"))
    r = req(system_prompt(4) + " second question")
    assert policy.choose(reps, r) is home and r.outcome == "prefix_hit"
