"""Metrics sources: where the autoscaler reads load (Prometheus HTTP API, or a direct scrape)."""

from cluster.autoscaler.sources.base import MetricsSource

__all__ = ["MetricsSource"]
