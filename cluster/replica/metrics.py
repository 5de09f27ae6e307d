"""A replica's Prometheus metrics: vLLM's names, with ``model`` and ``replica`` labels.

Every replica (vLLM or sim engine) exports the same ``vllm:*`` series, so
dashboards, recording rules and the autoscaler do not care which engine runs:

- gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` and counters ``vllm:prefix_cache_queries`` /
  ``vllm:prefix_cache_hits`` are read from ``Engine.load()`` at scrape time (a
  collector, so nothing is recorded on the hot path for them);
- histograms (TTFT, inter-token latency, E2E latency) and the prompt /
  generation token counters are recorded by the engine: the vLLM backend feeds
  vLLM's own ``IterationStats`` (figures vLLM computed, not re-derived), the sim
  engine records the same quantities from its scheduler.

Each replica has its own registry and serves it on its own HTTP port
(``controller.replica_metrics_port``; ephemeral by default, published by the
controller in the endpoint set and in ``/sd/replicas``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster.engine.base import LoadSnapshot

# vLLM v1's buckets (vllm/v1/metrics/loggers.py), so quantiles compare across engines.
TTFT_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

LABELS = ("model", "replica")


class _LoadCollector(Collector):
    def __init__(self, labels: tuple[str, str], load: Callable[[], LoadSnapshot]) -> None:
        self._labels = list(labels)
        self._load = load

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        snap = self._load()
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", snap.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", snap.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", snap.kv_cache_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(self._labels, value)
            yield g
        for name, doc, value in (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", snap.prefix_cache_queries),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", snap.prefix_cache_hits),
        ):
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(self._labels, value)
            yield c

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class ReplicaMetrics:
    """One replica's registry; engines record through the ``observe_*`` methods."""

    def __init__(self, model: str, replica: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = (model, replica)
        r = self.registry
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", LABELS, buckets=TTFT_BUCKETS, registry=r
        ).labels(*self.labels)
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", LABELS, buckets=ITL_BUCKETS, registry=r
        ).labels(*self.labels)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LABELS, buckets=E2E_BUCKETS, registry=r
        ).labels(*self.labels)
        self._prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", LABELS, registry=r).labels(*self.labels)
        self._generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.", LABELS, registry=r).labels(
            *self.labels
        )

    def watch_load(self, load: Callable[[], LoadSnapshot]) -> None:
        """Export the engine's load gauges and prefix-cache counters, read at scrape time."""
        self.registry.register(_LoadCollector(self.labels, load))

    def watch_in_flight(self, in_flight: Callable[[], int]) -> None:
        """Export the requests the replica server holds (``llm_cluster_replica_in_flight_requests``), read at scrape time."""
        g = Gauge("llm_cluster_replica_in_flight_requests", "Requests the replica server is serving now.", LABELS, registry=self.registry)
        g.labels(*self.labels).set_function(in_flight)

    def observe_ttft(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def observe_e2e(self, seconds: float) -> None:
        self._e2e.observe(seconds)

    def add_prompt_tokens(self, n: int) -> None:
        if n:
            self._prompt.inc(n)

    def add_generation_tokens(self, n: int) -> None:
        if n:
            self._generation.inc(n)
