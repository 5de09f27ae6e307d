"""Build the autoscaler loop from the ``autoscaler`` config section."""

from __future__ import annotations

from typing import Any

from cluster.autoscaler.actuators import Actuator, make_actuator
from cluster.autoscaler.loop import Autoscaler
from cluster.autoscaler.policies import TargetTracking
from cluster.autoscaler.sources.base import MetricsSource
from cluster.autoscaler.sources.prometheus import PrometheusSource
from cluster.autoscaler.sources.scrape import ScrapeSource
from cluster.config import ClusterConfig


def target_model(cfg: ClusterConfig) -> str:
    return cfg.autoscaler.model or cfg.models[0].name


def controller_discovery(controller: Any):
    """Replica metrics URLs from the Ray controller (the same list as its /sd/replicas)."""

    async def discover() -> list[str]:
        groups = await controller.service_discovery.remote()
        return [f"http://{t}/metrics" for g in groups for t in g["targets"]]

    return discover


def make_source(cfg: ClusterConfig, controller: Any | None = None) -> MetricsSource:
    s = cfg.autoscaler.source
    q = cfg.autoscaler.policy.ttft_quantile
    if s.kind == "prometheus":
        return PrometheusSource(
            s.prometheus_url, s.queries, window=s.rate_window, ttft_quantile=q, stale_after_s=s.stale_after_s, timeout_s=s.timeout_s
        )
    discover = None
    if not s.scrape_targets:
        if controller is None:
            from cluster.ray_connect import find_controller

            controller = find_controller(cfg)
        discover = controller_discovery(controller)
    return ScrapeSource(s.scrape_targets, discover=discover, router_url=s.router_metrics_url, ttft_quantile=q, timeout_s=s.timeout_s)


def build_autoscaler(
    cfg: ClusterConfig, *, actuator: Actuator | None = None, source: MetricsSource | None = None, dry_run: bool = False
) -> Autoscaler:
    a = cfg.autoscaler
    model = target_model(cfg)
    return Autoscaler(
        model,
        source or make_source(cfg),
        TargetTracking(a.policy, stale_after_s=a.source.stale_after_s),
        actuator or make_actuator(cfg, model),
        metric=a.policy.metric,
        interval_s=a.interval_s,
        dry_run=dry_run,
    )
