"""The router's Prometheus metrics (``llm_cluster_router_*``), one set per router.

A :class:`RouterMetrics` owns its own registry (as the autoscaler's metrics
do), so a test or benchmark can run several routers in one process and read
each one's figures without diffing a module-wide singleton; every part of the
router (balancer, gate, circuit breaker) records into the instance it was
given.  The router serves it on its own metrics port (``router.metrics_port``),
apart from the public API; with ``router.workers`` > 1 the supervisor serves
all workers' metrics on that port (see ``cluster.router.workers``).
Latencies are as the *client* sees them (the router's clock), so they include
queueing in the router and the network hop to the replica; the engine's own
view is the replicas' ``vllm:*`` metrics.

Labels stay low-cardinality: model, status code, policy, outcome, replica.
The page also carries the process's own ``process_*`` metrics (``cluster/metrics_server.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from cluster.router.metric_families import Families, Family

if TYPE_CHECKING:  # the balancer imports this module
    from cluster.router.balancer import Balancer

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_P = "llm_cluster_router_"


class RouterMetrics:
    """Every metric of one router, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        families = Families(self.registry)

        def counter(name: str, doc: str, labels: Sequence[str]) -> Family:
            return families.add(Family("counter", _P + name, doc, labels))

        def gauge(name: str, doc: str, labels: Sequence[str]) -> Family:
            return families.add(Family("gauge", _P + name, doc, labels))

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Family:
            return families.add(Family("histogram", _P + name, doc, ["model"], buckets))

        self.requests = counter(
            "requests",
            "Requests finished by the router, by model, API and status code (gRPC code name or HTTP status).",
            ["model", "api", "code"],
        )
        self.in_flight = gauge("in_flight_requests", "Requests the router is relaying now.", ["model"])
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token as the client sees it.", _LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between streamed chunks as the client sees it.", _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Request latency from arrival to last token.", _E2E_BUCKETS)
        self.queue_depth = gauge("admission_queue_depth", "Requests waiting in the admission queue.", ["model"])
        self.routing_decisions = counter(
            "routing_decisions",
            "Routing decisions by policy and outcome (e.g. pick, prefix_hit, prefix_miss, spill_over, session_hit).",
            ["model", "policy", "outcome"],
        )
        self.retries = counter(
            "retries",
            "Attempts retried on another replica, by reason: the failed attempt's gRPC code, "
            "first_token_timeout, or mid_stream (a migration).",
            ["model", "reason"],
        )
        self.circuit_ejections = counter(
            "circuit_ejections", "Replicas ejected by the circuit breaker (each ejection, half-open re-ejections included).", ["model"]
        )
        self.replicas_known = gauge("replicas_known", "Replicas in the router's endpoint set.", ["model"])
        self.replicas_healthy = gauge(
            "replicas_healthy", "Replicas the router will route to (fresh load report, circuit closed).", ["model"]
        )
        self.refused = counter(
            "refused",
            "Requests refused by the router's gate, by tenant and reason "
            "(unauthenticated, requests_per_minute, tokens_per_minute, max_concurrent, queue_full, queue_timeout).",
            ["tenant", "reason"],
        )
        self.tenant_in_flight = gauge("tenant_in_flight_requests", "Admitted requests in flight, by tenant.", ["tenant"])
        self.held = gauge(
            "held_requests", "Requests each layer of the router holds now (admission, limiter, balancer, replica handles).", ["layer"]
        )
        self.waiting_for_replica = gauge(
            "waiting_for_replica",
            "Requests held because their model has no ready replica (demand the autoscaler must see at zero replicas).",
            ["model"],
        )
        self.no_replica = counter(
            "no_replica",
            "Requests that found no ready replica on arrival, by outcome: served (one became ready in time), timeout, rejected_full.",
            ["model", "outcome"],
        )

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's value (0 when absent): ``name`` without the ``llm_cluster_router_`` prefix, e.g. ``retries_total``."""
        return self.registry.get_sample_value(_P + name, labels or {}) or 0.0

    def refresh_replica_gauges(self, by_model: dict[str, list]) -> None:
        """Known / healthy replicas per model, computed at scrape time (not per request)."""
        for model, handles in by_model.items():
            self.waiting_for_replica.labels(model)  # exists (at 0) for every model: its scrape time says the router is alive
            self.replicas_known.labels(model).set(len(handles))
            self.replicas_healthy.labels(model).set(sum(1 for h in handles if not h.load_stale and h.routable))


def request_done(balancer: Balancer, model: str, api: str, code: str) -> None:
    """Count one finished request; unknown model names share one label value (bounded cardinality)."""
    reps = balancer.replicas
    ok = model in reps.models or model in reps.adapters  # a LoRA adapter counts under its own name
    balancer.metrics.requests.labels(model if ok else "unknown", api, code).inc()
