"""The router's metric types: labelled counters, gauges and histograms whose children are plain numbers.

``prometheus_client``'s own types take a lock and check what they are on every ``inc`` / ``observe`` and
loop over the buckets in Python; a request through the router makes about twenty of those calls (its
gauges up and down, its counters, two histograms), measurably part of the per-request CPU (a side run,
1 worker: 15-40 us of user time per request with metrics swapped for no-ops).  The router relays on one
event loop and serves ``/metrics`` on the same loop, so nothing needs the lock.  Here a child is a number
an ``inc`` adds to; at scrape time :class:`Families` (a ``prometheus_client`` collector on the router's
registry) turns every family into ``prometheus_client``'s metric families, so the exposition, the
registry's ``get_sample_value`` and the names (``*_total``, ``*_bucket{le=...}``, ``*_sum``, ``*_count``)
are prometheus_client's.  Left out: the ``*_created`` samples (a counter's creation time).

Failure modes: the wrong number of label values raises ``ValueError`` (as ``prometheus_client`` does);
not thread-safe by design: only the router's event loop may touch them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from operator import add as _add
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

INF = float("inf")


class Value:
    """A counter's or gauge's child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Histogram:
    """A histogram's child: a count per bucket (not cumulative; the last bound is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount, as prometheus_client
        self.sum += amount

    def add(self, counts: Sequence[int], total: float, n: int) -> None:
        """``n`` observations counted elsewhere (a stream's pump), ``counts[i]`` of them in bucket ``i``."""
        self.counts = list(map(_add, self.counts, counts))  # one C loop, not a Python one per bucket
        if n:
            self.sum += total


class Family:
    """One metric's children, by label values (looked up from a dict: the router asks for the same few)."""

    __slots__ = ("_children", "_series", "bounds", "doc", "kind", "labelnames", "name")

    def __init__(self, kind: str, name: str, doc: str, labelnames: Sequence[str], buckets: Sequence[float] = ()) -> None:
        self.kind, self.name, self.doc, self.labelnames = kind, name, doc, tuple(labelnames)
        self.bounds = (*sorted(float(b) for b in buckets if b != INF), INF) if kind == "histogram" else ()
        #: Label values as given -> child (what ``labels`` looks up); label values as strings -> child (exposed).
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: Any) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {len(values)}")
            key = tuple(str(v) for v in values)
            child = self._series.get(key)
            if child is None:
                child = self._series[key] = Histogram(self.bounds) if self.kind == "histogram" else Value()
            self._children[values] = child
        return child

    def collect(self) -> Metric:
        labels = list(self.labelnames)
        kids = self._series
        if self.kind == "counter":
            fam: Metric = CounterMetricFamily(self.name, self.doc, labels=labels)
            for k, c in kids.items():
                fam.add_metric(list(k), c.value)
        elif self.kind == "gauge":
            fam = GaugeMetricFamily(self.name, self.doc, labels=labels)
            for k, c in kids.items():
                fam.add_metric(list(k), c.value)
        else:
            fam = HistogramMetricFamily(self.name, self.doc, labels=labels)
            for k, c in kids.items():
                running, buckets = 0, []
                for bound, n in zip(self.bounds, c.counts, strict=True):
                    running += n
                    buckets.append((floatToGoString(bound), running))
                fam.add_metric(list(k), buckets, c.sum)
        return fam


class Families:
    """The families of one router, registered on its registry as one collector."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.families: list[Family] = []
        registry.register(self)

    def add(self, family: Family) -> Family:
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            yield f.collect()

    def describe(self) -> list[Metric]:
        return []  # families are added after registration; the registry checks no name clash for them
