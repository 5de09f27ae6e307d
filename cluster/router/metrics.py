"""The router's Prometheus metrics (``llm_cluster_router_*``), defined in one place.

Every module of the router records into these objects; the router serves them
on its own metrics port (``router.metrics_port``), apart from the public API.
Latencies are as the *client* sees them (the router's clock), so they include
queueing in the router and the network hop to the replica; the engine's own
view is the replicas' ``vllm:*`` metrics.

Labels stay low-cardinality: model, status code, policy, outcome, replica.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The router's registry (not the process-global one, so a test can run several
#: routers and a process can host a router beside other exporters).
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)

REQUESTS = Counter(
    "llm_cluster_router_requests",
    "Requests finished by the router, by model, API and status code (gRPC code name or HTTP status).",
    ["model", "api", "code"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("llm_cluster_router_in_flight_requests", "Requests the router is relaying now.", ["model"], registry=REGISTRY)
TTFT = Histogram(
    "llm_cluster_router_time_to_first_token_seconds",
    "Time to first token as the client sees it.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ITL = Histogram(
    "llm_cluster_router_inter_token_latency_seconds",
    "Time between streamed chunks as the client sees it.",
    ["model"],
    buckets=_ITL_BUCKETS,
    registry=REGISTRY,
)
E2E = Histogram(
    "llm_cluster_router_e2e_request_latency_seconds",
    "Request latency from arrival to last token.",
    ["model"],
    buckets=_E2E_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("llm_cluster_router_admission_queue_depth", "Requests waiting in the admission queue.", ["model"], registry=REGISTRY)
ROUTING_DECISIONS = Counter(
    "llm_cluster_router_routing_decisions",
    "Routing decisions by policy and outcome (e.g. pick, prefix_hit, prefix_miss, spill_over, session_hit).",
    ["model", "policy", "outcome"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "llm_cluster_router_retries",
    "Attempts retried on another replica, by reason: the failed attempt's gRPC code, first_token_timeout, or mid_stream (a migration).",
    ["model", "reason"],
    registry=REGISTRY,
)
REPLICAS_KNOWN = Gauge("llm_cluster_router_replicas_known", "Replicas in the router's endpoint set.", ["model"], registry=REGISTRY)
REPLICAS_HEALTHY = Gauge(
    "llm_cluster_router_replicas_healthy",
    "Replicas the router will route to (fresh load report, circuit closed).",
    ["model"],
    registry=REGISTRY,
)
REFUSED = Counter(
    "llm_cluster_router_refused",
    "Requests refused by the router's gate, by tenant and reason "
    "(unauthenticated, requests_per_minute, tokens_per_minute, max_concurrent, queue_full, queue_timeout).",
    ["tenant", "reason"],
    registry=REGISTRY,
)
TENANT_IN_FLIGHT = Gauge(
    "llm_cluster_router_tenant_in_flight_requests", "Admitted requests in flight, by tenant.", ["tenant"], registry=REGISTRY
)
WAITING_FOR_REPLICA = Gauge(
    "llm_cluster_router_waiting_for_replica",
    "Requests held because their model has no ready replica (demand the autoscaler must see at zero replicas).",
    ["model"],
    registry=REGISTRY,
)
NO_REPLICA = Counter(
    "llm_cluster_router_no_replica",
    "Requests that found no ready replica on arrival, by outcome: served (one became ready in time), timeout, rejected_full.",
    ["model", "outcome"],
    registry=REGISTRY,
)


def refresh_replica_gauges(by_model: dict[str, list]) -> None:
    """Known / healthy replicas per model, computed at scrape time (not per request)."""
    for model, handles in by_model.items():
        WAITING_FOR_REPLICA.labels(model)  # exists (at 0) for every model: its scrape time says the router is alive
        REPLICAS_KNOWN.labels(model).set(len(handles))
        REPLICAS_HEALTHY.labels(model).set(sum(1 for h in handles if not h.load_stale and h.routable))


def request_done(balancer: object, model: str, api: str, code: str) -> None:
    """Count one finished request; unknown model names share one label value (bounded cardinality)."""
    known = getattr(balancer, "known_model", None)
    REQUESTS.labels(model if known is not None and known(model) else "unknown", api, code).inc()
