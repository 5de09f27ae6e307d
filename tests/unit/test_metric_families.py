"""The router's lock-free metric types expose what prometheus_client's own types would, sample for sample
(names, labels, values, bucket bounds), for the same calls — so dashboards, alerts and the autoscaler's
scrape read the router as before."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cluster.router.metric_families import Families, Family
from cluster.router.metrics import RouterMetrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> set[tuple]:
    return {
        (s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")  # a counter's creation time: not kept by the router's types
    }


def test_the_same_calls_give_the_same_samples_as_prometheus_clients_types():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    fams = Families(ours)
    pairs = [
        (Counter("c", "c", ["model", "code"], registry=theirs), fams.add(Family("counter", "c", "c", ["model", "code"]))),
        (Gauge("g", "g", ["model"], registry=theirs), fams.add(Family("gauge", "g", "g", ["model"]))),
        (Histogram("h", "h", ["model"], buckets=BUCKETS, registry=theirs), fams.add(Family("histogram", "h", "h", ["model"], BUCKETS))),
    ]
    rng = random.Random(3)
    for _ in range(2000):
        (p, f), model = rng.choice(pairs), rng.choice(["a", "b", "c"])
        labels = (model, rng.choice(["200", "400"])) if f.kind == "counter" else (model,)
        v = rng.choice([0.0, 0.001, 0.0005, 0.05, 1.0, 3.0, 99.0, rng.random()])
        if f.kind == "counter":
            p.labels(*labels).inc(v)
            f.labels(*labels).inc(v)
        elif f.kind == "gauge":
            op = rng.choice(["inc", "dec", "set"])
            getattr(p.labels(*labels), op)(v)
            getattr(f.labels(*labels), op)(v)
        else:
            p.labels(*labels).observe(v)
            f.labels(*labels).observe(v)
    assert _samples(ours) == _samples(theirs)


def test_gaps_a_pump_counted_and_added_at_once_are_what_observing_each_gap_would_give():
    m = RouterMetrics()
    gaps = [0.0004, 0.002, 0.002, 0.04, 7.0, 0.0011]
    child = m.itl.labels("x")
    counts = [0] * len(child.bounds)
    for g in gaps:
        counts[next(i for i, b in enumerate(child.bounds) if g <= b)] += 1
    child.add(counts, sum(gaps), len(gaps))
    for g in gaps:
        m.itl.labels("y").observe(g)

    def read(model: str) -> tuple[float, ...]:
        name = "inter_token_latency_seconds"
        labels = {"model": model}
        return m.value(f"{name}_count", labels), m.value(f"{name}_sum", labels), m.value(f"{name}_bucket", {**labels, "le": "0.0025"})

    assert read("x") == read("y") and read("x")[0] == 6 and read("x")[2] == 4


def test_label_values_are_strings_whatever_they_were_given_as_and_their_number_is_checked():
    m = RouterMetrics()
    m.requests.labels("m", "http", 200).inc()
    m.requests.labels("m", "http", "200").inc()
    assert m.value("requests_total", {"model": "m", "api": "http", "code": "200"}) == 2
    with pytest.raises(ValueError, match="3 label values"):
        m.requests.labels("m")
