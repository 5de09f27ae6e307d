import random

from cluster.config import PolicyOptions, WeightedOptions
from cluster.router.policies import RouteRequest, make_policy
from cluster.router.policies.weighted import Weighted
from tests.policy_fakes import fleet, report, start, system_prompt


def req(prompt: str = "", session: str | None = None) -> RouteRequest:
    return RouteRequest(model="m", request_id="x", prompt=prompt, session_id=session)


def test_a_prefix_weight_keeps_a_prefix_on_its_replica():
    reps = fleet(8)
    policy = Weighted(WeightedOptions(prefix=1.0, load=0.1, kv=0.0, session=0.0), rng=random.Random(1))
    home = policy.choose(reps, req(system_prompt(1)))
    for i in range(10):
        r = req(system_prompt(1) + f" {i}")
        assert policy.choose(reps, r) is home and r.outcome == "prefix_hit"


def test_a_kv_only_mix_behaves_like_least_kv():
    reps = fleet(4)
    for h, kv in zip(reps, (0.9, 0.8, 0.1, 0.7), strict=True):
        report(h, kv=kv)
    policy = Weighted(WeightedOptions(prefix=0, session=0, load=0, kv=1.0, sample=4), rng=random.Random(2))
    assert policy.choose(reps, req(system_prompt(2))) is reps[2]


def test_a_session_weight_keeps_a_session_and_load_breaks_it_when_overloaded():
    reps = fleet(4)
    policy = Weighted(WeightedOptions(prefix=0, session=1.0, load=0.2, kv=0, balance_eps=0.5), rng=random.Random(3))
    home = policy.choose(reps, req(session="s"))
    r = req(session="s")
    assert policy.choose(reps, r) is home and r.outcome == "session_hit"
    start(home, 10)
    assert policy.choose(reps, req(session="s")) is not home


def test_the_configured_weights_decide_which_signal_wins():
    reps = fleet(2)
    full_cache, busy = reps
    report(full_cache, kv=0.9, running=0)
    report(busy, kv=0.1, running=6)

    def pick(weights: dict[str, float]):
        o = PolicyOptions.model_validate({"weighted": {"prefix": 0, "session": 0, "sample": 2, **weights}})
        policy = make_policy("weighted", o, rng=random.Random(5))
        assert isinstance(policy, Weighted)
        return policy.choose(reps, req(system_prompt(5)))

    assert pick({"kv": 1.0, "load": 0.0}) is busy
    assert pick({"kv": 0.0, "load": 1.0}) is full_cache


def test_a_ttft_weight_avoids_the_replica_that_answers_slowly():
    reps = fleet(3)
    for h, ttft in zip(reps, (2.0, 0.1, 1.5), strict=True):
        report(h)
        h.load.recent_ttft_s = ttft
    policy = Weighted(WeightedOptions(prefix=0, session=0, load=0, kv=0, ttft=1.0, sample=3), rng=random.Random(4))
    assert policy.choose(reps, req(system_prompt(3))) is reps[1]
