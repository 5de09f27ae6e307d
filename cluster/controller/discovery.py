"""How others find the replicas: the versioned endpoint watch (routers) and Prometheus service discovery.

- :class:`EndpointWatch`: the endpoint set's version and its long-poll.  A
  router's ``watch(version)`` returns when the set changes, so routers never
  ask the controller anything per request.  Versions start from the wall clock
  (milliseconds), so a restarted controller's versions exceed the ones routers
  saw from its previous life and their watch answers at once.
- :func:`endpoint_set`: the set itself, READY replicas per model.
- :func:`sd_targets`: ``GET /sd/replicas``, Prometheus HTTP service discovery of
  every ready replica's metrics address.
- :class:`ControllerCollector`: ``llm_cluster_controller_*`` gauges, read at
  scrape time, and :func:`serve_metrics`, which serves both on
  ``controller.metrics_port``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cluster.controller.replica import Replica, ReplicaState

log = logging.getLogger(__name__)

Endpoints = dict[str, list[dict[str, str]]]


class EndpointWatch:
    """A version number that waiters can long-poll; bumping it wakes them all at once (no task)."""

    def __init__(self) -> None:
        self.version = int(time.time() * 1000)
        self._changed = asyncio.Event()  # binds to a loop on first wait

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, known_version: int, timeout_s: float) -> None:
        """Return once the version differs from ``known_version`` (at once if it already does), or on timeout.

        A ``known_version`` above ours comes from an earlier controller: it is answered at once too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.version == known_version:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return


def endpoint_set(models: Iterable[str], replicas: Iterable[Replica]) -> Endpoints:
    """READY replicas per model (each model's LoRA adapters travel beside it in the watch, not per endpoint)."""
    out: Endpoints = {name: [] for name in models}
    for r in replicas:
        if r.serving and r.model in out:
            ep = {**r.card, "replica_id": r.replica_id, "address": str(r.address), "max_model_len": str(r.max_model_len)}
            if r.relay_address:
                ep["relay_address"] = r.relay_address
            if r.metrics_address:
                ep["metrics_address"] = r.metrics_address
            out[r.model].append(ep)
    for eps in out.values():
        eps.sort(key=lambda e: e["replica_id"])
    return out


def sd_targets(replicas: Iterable[Replica]) -> list[dict[str, Any]]:
    """Prometheus HTTP SD: one target group per ready replica's metrics endpoint."""
    return [
        {"targets": [r.metrics_address], "labels": {"model": r.model, "replica": r.replica_id}}
        for r in sorted(replicas, key=lambda r: r.replica_id)
        if r.state == ReplicaState.READY and r.metrics_address
    ]


class ControllerCollector(Collector):
    """Desired / ready replicas per model, read from the controller's state at scrape time."""

    def __init__(self, desired: Callable[[], Mapping[str, int]], replicas: Callable[[], Iterable[Replica]]) -> None:
        self._desired = desired
        self._replicas = replicas

    def collect(self) -> Any:
        desired = GaugeMetricFamily("llm_cluster_controller_desired_replicas", "Desired replicas per model.", labels=["model"])
        ready = GaugeMetricFamily("llm_cluster_controller_ready_replicas", "Ready replicas per model.", labels=["model"])
        states = GaugeMetricFamily("llm_cluster_controller_replicas", "Replicas per model and state.", labels=["model", "state"])
        replicas = list(self._replicas())
        for name, n in self._desired().items():
            reps = [r for r in replicas if r.model == name]
            desired.add_metric([name], n)
            ready.add_metric([name], sum(r.state == ReplicaState.READY for r in reps))
            for state in (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING):
                states.add_metric([name, state.value.lower()], sum(r.state == state for r in reps))
        return [desired, ready, states]

    def describe(self) -> Any:
        return []


async def serve_metrics(registry: CollectorRegistry, port: int, sd: Callable[[], list[dict[str, Any]]]) -> tuple[Any, int]:
    """Serve ``/metrics`` and ``/sd/replicas`` on ``port``; (runner, bound port), or (None, 0) when the port is busy.

    A busy port must not stop the control plane: the cluster then serves without controller metrics.
    """
    from aiohttp import web

    from cluster.metrics_server import start_metrics_server

    async def sd_handler(request: web.Request) -> web.Response:
        return web.json_response(sd())

    try:
        runner, bound = await start_metrics_server(registry, "0.0.0.0", port, {"/sd/replicas": sd_handler})
    except OSError as exc:
        log.error("controller metrics port unavailable", extra={"port": port, "error": str(exc)})
        return None, 0
    log.info("controller metrics serving", extra={"metrics_port": bound})
    return runner, bound
