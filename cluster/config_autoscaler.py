"""The autoscaler's part of the cluster config (``autoscaler:`` in cluster.yaml): source, policy, actuator.

Plain configuration types: they import nothing from the autoscaler, whose
modules import them (the Kubernetes actuator its :class:`KubernetesTarget`).
:mod:`cluster.config` embeds :class:`AutoscalerConfig` and re-exports these.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.config_base import Strict


class KubernetesTarget(Strict):
    """What the Kubernetes actuator scales, how it reaches the API server, and how hard it retries."""

    kind: Literal["Deployment", "StatefulSet", "RayCluster"] = "RayCluster"
    #: Name of the Deployment / StatefulSet / RayCluster.
    name: str = Field("llm-cluster", min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    #: None: the pod's own namespace in-cluster, else the kubeconfig context's namespace, else "default".
    namespace: str | None = Field(None, min_length=1)
    #: RayCluster only: the ``groupName`` of the worker group to scale.
    worker_group: str | None = Field(None, min_length=1)
    #: Explicit kubeconfig file; None: in-cluster config inside a pod, else $KUBECONFIG / ~/.kube/config.
    kubeconfig: str | None = None
    #: kubeconfig context; None: the file's current context.
    context: str | None = None
    #: Attempts per operation for 409 / 429 / 5xx / connection errors (1 = no retry).
    max_attempts: int = Field(5, ge=1, le=20)
    #: Backoff before retry k (k = 1, 2, ...): uniform in [0.5, 1] x min(backoff_max_s, backoff_base_s x 2^(k-1)).
    backoff_base_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    #: Timeout of one HTTP request to the API server.
    request_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _group_for_raycluster(self) -> KubernetesTarget:
        if self.kind == "RayCluster" and not self.worker_group:
            raise ValueError("worker_group is required when kind is RayCluster (the groupName of the worker group to scale)")
        if self.kind != "RayCluster" and self.worker_group:
            raise ValueError(f"worker_group applies to kind RayCluster only, not {self.kind}")
        return self


class PrometheusSourceConfig(Strict):
    #: ``prometheus``: PromQL over Prometheus' HTTP API; ``scrape``: read the replicas' /metrics directly.
    kind: Literal["prometheus", "scrape"] = "prometheus"
    #: Prometheus' base URL (kind ``prometheus``).
    prometheus_url: str = "http://127.0.0.1:9090"
    #: PromQL overrides by signal (load, kv_usage, token_throughput, ttft, demand, replicas, running, completions);
    #: "{model}", "{window}" and "{quantile}" are substituted.
    queries: dict[str, str] = Field(default_factory=dict)
    #: scrape: replica metrics URLs (http://host:port/metrics); empty = the Ray controller's /sd/replicas.
    scrape_targets: list[str] = Field(default_factory=list)
    #: scrape: the router's /metrics URL, for the demand held at zero replicas.
    router_metrics_url: str | None = None
    #: Range of rate() in the default queries ("{window}").
    rate_window: str = Field("1m", pattern=r"^[0-9]+(ms|s|m|h)$")
    #: Samples older than this are stale: the policy holds.
    stale_after_s: float = Field(30.0, gt=0)
    #: Per query / scrape.
    timeout_s: float = Field(3.0, gt=0)

    @field_validator("queries")
    @classmethod
    def _known_signals(cls, v: dict[str, str]) -> dict[str, str]:
        known = {"load", "kv_usage", "token_throughput", "ttft", "demand", "replicas", "running", "completions"}
        bad = sorted(set(v) - known)
        if bad:
            raise ValueError(f"unknown query signal(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        return v


class ScalingPolicyConfig(Strict):
    #: Per-replica load signal: load = waiting + running requests, kv_usage (0..1), token_throughput (tokens/s).
    metric: Literal["load", "kv_usage", "token_throughput"] = "load"
    #: Target value of ``metric`` per replica.
    target: float = Field(8.0, gt=0)
    #: No change while observed/target is within 1 +- tolerance.
    tolerance: float = Field(0.1, ge=0, lt=1)
    #: TTFT SLO (seconds) of the guard: above it, scale up at least one step and never down; null disables.
    ttft_slo_s: float | None = Field(2.0, gt=0)
    #: The TTFT quantile the guard compares with the SLO.
    ttft_quantile: float = Field(0.9, gt=0, lt=1)
    #: Fewest replicas; 0 allows scale to zero (the router holds requests meanwhile).
    min_replicas: int = Field(1, ge=0)
    #: Most replicas.
    max_replicas: int = Field(8, ge=1)
    #: A scale-up must be recommended for this long (the window's minimum is used).
    scale_up_window_s: float = Field(0.0, ge=0)
    #: A scale-down must be recommended for this long (the window's maximum is used).
    scale_down_window_s: float = Field(60.0, ge=0)
    #: Most replicas added in one decision.
    max_scale_up_step: int = Field(4, ge=1)
    #: No scale-down within this long after any change.
    cooldown_s: float = Field(30.0, ge=0)
    #: While replicas asked for are still starting (ready < current), no further scale-up for up to
    #: this long after the last change: the queue that builds meanwhile is theirs to serve, and
    #: sizing for it overshoots.  0 disables; keep it above a replica's start-up time.
    starting_grace_s: float = Field(0.0, ge=0)
    #: The load's growth rate (for the backlog correction) is measured over this long.
    growth_window_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> ScalingPolicyConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.metric == "kv_usage" and self.target > 1:
            raise ValueError("kv_usage target is a fraction in (0, 1]")
        return self


class ActuatorConfig(Strict):
    #: ``ray``: the controller's set_replicas (drains on scale-down); ``kubernetes``: the target below.
    kind: Literal["ray", "kubernetes"] = "ray"
    #: The Deployment / StatefulSet / KubeRay worker group to scale when kind = kubernetes.
    kubernetes: KubernetesTarget | None = None

    @model_validator(mode="after")
    def _target(self) -> ActuatorConfig:
        if self.kind == "kubernetes" and self.kubernetes is None:
            raise ValueError("kind kubernetes needs autoscaler.actuator.kubernetes (the Deployment/StatefulSet/RayCluster to scale)")
        return self


class AutoscalerConfig(Strict):
    #: The model to scale; None = the first model.
    model: str | None = None
    #: Seconds between decisions.
    interval_s: float = Field(5.0, gt=0)
    #: The autoscaler's own /metrics (decisions); 0 = ephemeral.
    metrics_port: int = Field(9402, ge=0, le=65535)
    source: PrometheusSourceConfig = Field(default_factory=PrometheusSourceConfig)
    policy: ScalingPolicyConfig = Field(default_factory=ScalingPolicyConfig)
    actuator: ActuatorConfig = Field(default_factory=ActuatorConfig)
