import random

from cluster.config import SessionAffinityOptions
from cluster.router.policies import RouteRequest
from cluster.router.policies.session_affinity import SessionAffinity
from tests.policy_fakes import fleet, report, start


def req(session: str | None) -> RouteRequest:
    return RouteRequest(model="m", request_id="x", session_id=session)


def test_every_turn_of_a_session_goes_to_the_same_replica():
    reps = fleet(4)
    policy = SessionAffinity(rng=random.Random(1))
    homes = {s: policy.choose(reps, req(s)) for s in ("alice", "bob", "carol", "dave")}
    for _ in range(5):
        for s, home in homes.items():
            r = req(s)
            assert policy.choose(reps, r) is home
            assert r.outcome == "session_hit"


def test_an_overloaded_session_replica_spills_over_and_the_session_moves():
    reps = fleet(4)
    policy = SessionAffinity(SessionAffinityOptions(balance_eps=0.5), rng=random.Random(2))
    home = policy.choose(reps, req("hot"))
    start(home, 6)  # far above the mean
    r = req("hot")
    moved = policy.choose(reps, r)
    assert moved is not home and r.outcome == "spill_over"
    r = req("hot")
    assert policy.choose(reps, r) is moved and r.outcome == "session_hit"


def test_a_stale_session_replica_is_avoided():
    reps = fleet(2)
    policy = SessionAffinity(rng=random.Random(3))
    home = policy.choose(reps, req("s"))
    report(home, age_s=3.0)
    assert all(policy.choose(reps, req("s")) is not home for _ in range(5))


def test_requests_without_a_session_balance_on_load():
    reps = fleet(3)
    policy = SessionAffinity(rng=random.Random(4))
    for _ in range(300):
        r = req(None)
        start(policy.choose(reps, r))
        assert r.outcome == "no_session"
    loads = [h.in_flight for h in reps]
    assert max(loads) - min(loads) <= 3, loads


def test_remembered_sessions_are_bounded_and_the_least_recently_used_are_forgotten():
    reps = fleet(2)
    policy = SessionAffinity(SessionAffinityOptions(max_sessions=100), rng=random.Random(5))
    for i in range(100):
        policy.choose(reps, req(f"s{i}"))
    r = req("s0")
    policy.choose(reps, r)  # the oldest session comes back: now the most recent
    assert r.outcome == "session_hit"
    for i in range(100, 199):
        policy.choose(reps, req(f"s{i}"))
    assert len(policy.sessions) == 100
    assert ("m", "s0") in policy.sessions  # used recently: kept
    assert ("m", "s1") not in policy.sessions and ("m", "s99") not in policy.sessions  # least recently used: gone
    assert all(("m", f"s{i}") in policy.sessions for i in range(100, 199))
