import random
from collections.abc import Sequence

from cluster.config import LeastKvOptions
from cluster.router.policies import RouteRequest
from cluster.router.policies.least_kv import LeastKv
from tests.policy_fakes import fleet, report, start

REQ = RouteRequest(model="m", request_id="x")


def test_the_replica_with_the_least_kv_usage_wins():
    reps = fleet(4)
    for h, kv in zip(reps, (0.9, 0.2, 0.6, 0.5), strict=True):
        report(h, kv=kv)
    assert LeastKv(rng=random.Random(1)).choose(reps, REQ) is reps[1]


def test_a_stale_replica_is_avoided_even_if_its_last_report_looked_empty():
    reps = fleet(3)
    report(reps[0], kv=0.0, age_s=10)
    report(reps[1], kv=0.7)
    report(reps[2], kv=0.8)
    assert LeastKv(rng=random.Random(2)).choose(reps, REQ) is reps[1]


def test_a_burst_between_two_reports_spreads_instead_of_piling_on_one_replica():
    reps = fleet(4)
    for h in reps:
        report(h, kv=0.1)
    report(reps[0], kv=0.0)
    policy = LeastKv(LeastKvOptions(sample=4), rng=random.Random(3))
    for _ in range(20):
        start(policy.choose(reps, REQ))
    assert max(h.in_flight for h in reps) <= 8


class CountingCandidates(Sequence):
    """The candidate list, counting how many elements a policy reads."""

    def __init__(self, items: list) -> None:
        self._items = items
        self.reads = 0

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        self.reads += 1 if isinstance(i, int) else len(range(*i.indices(len(self._items))))
        return self._items[i]

    def __iter__(self):
        for h in self._items:
            self.reads += 1
            yield h


def test_with_many_replicas_it_looks_at_a_bounded_sample():
    reps = fleet(1000)
    for i, h in enumerate(reps):
        report(h, kv=(i % 100) / 100)
    candidates = CountingCandidates(reps)
    policy = LeastKv(LeastKvOptions(sample=8), rng=random.Random(4))
    picks = []
    for _ in range(200):
        before = candidates.reads
        picks.append(policy.choose(candidates, REQ))
        # An O(n) scan would read all 1,000 candidates per decision.
        assert candidates.reads - before <= 8
    # Better than random (mean 0.495) by a wide margin, though it never saw most replicas.
    mean_kv = sum(h.load.kv_cache_usage for h in picks) / len(picks)
    assert mean_kv < 0.2
