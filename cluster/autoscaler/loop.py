"""The autoscaler loop: metrics source -> policy -> actuator, once per ``interval_s``.

Each tick reads the target's current count from the actuator, the model's
load from the source, asks the policy, and carries a change out.  Every
decision (holds included) is logged with its reason and numbers, and counted
in ``llm_cluster_autoscaler_decisions_total{model,action,reason}``, so "why
did it (not) scale" is answerable from logs and from Grafana.

Failure modes: the source failing -> the policy gets None and holds; the
actuator failing (after its own retries) -> counted, logged, and retried next
tick; nothing here ever guesses a replica count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.autoscaler.actuators.base import Actuator, ActuatorError
from cluster.autoscaler.policies.base import ScalingPolicy
from cluster.autoscaler.sources.base import MetricsSource
from cluster.autoscaler.types import Decision, Observation

log = logging.getLogger(__name__)


class AutoscalerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.desired = Gauge("llm_cluster_autoscaler_desired_replicas", "Replica count the autoscaler last decided.", ["model"], registry=r)
        self.current = Gauge("llm_cluster_autoscaler_current_replicas", "The target's replica count as last read.", ["model"], registry=r)
        self.load = Gauge(
            "llm_cluster_autoscaler_observed_load", "The load signal the policy last saw (fleet total).", ["model", "metric"], registry=r
        )
        self.ttft = Gauge("llm_cluster_autoscaler_ttft_seconds", "The TTFT quantile the policy last saw.", ["model"], registry=r)
        self.stale = Gauge("llm_cluster_autoscaler_metrics_stale", "1 while holding on stale or missing metrics.", ["model"], registry=r)
        self.decisions = Counter(
            "llm_cluster_autoscaler_decisions",
            "Decisions by action and reason (holds included).",
            ["model", "action", "reason"],
            registry=r,
        )
        self.errors = Counter("llm_cluster_autoscaler_actuator_errors", "Actuator calls that failed after retries.", ["model"], registry=r)
        self.source_errors = Counter("llm_cluster_autoscaler_source_errors", "Metrics-source reads that failed.", ["model"], registry=r)


class Autoscaler:
    def __init__(
        self,
        model: str,
        source: MetricsSource,
        policy: ScalingPolicy,
        actuator: Actuator,
        *,
        metric: str = "load",
        interval_s: float = 5.0,
        dry_run: bool = False,
        metrics: AutoscalerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.source = source
        self.policy = policy
        self.actuator = actuator
        self.metric = metric
        self.interval_s = interval_s
        self.dry_run = dry_run
        self.metrics = metrics or AutoscalerMetrics()
        self.clock = clock
        self.decisions: list[Decision] = []

    async def step(self) -> Decision | None:
        m, model = self.metrics, self.model
        try:
            current = await self.actuator.current()
        except ActuatorError as exc:
            m.errors.labels(model).inc()
            log.error("autoscaler cannot read the target; holding", extra={"model": model, "error": str(exc)})
            return None
        obs: Observation | None
        try:
            obs = await self.source.observe(model)
        except Exception as exc:
            m.source_errors.labels(model).inc()
            log.warning("metrics source failed; holding", extra={"model": model, "source": self.source.kind, "error": str(exc)[:300]})
            obs = None
        now = self.clock()
        d = self.policy.decide(now, obs, current)
        self.decisions.append(d)
        del self.decisions[:-1000]
        m.current.labels(model).set(current)
        m.stale.labels(model).set(1 if d.reason == "stale_metrics" else 0)
        m.decisions.labels(model, d.action, d.reason).inc()
        if obs is not None:
            signal = {"load": obs.load, "kv_usage": obs.kv_usage, "token_throughput": obs.token_throughput}[self.metric]
            if signal is not None:
                m.load.labels(model, self.metric).set(signal)
            if obs.ttft_s is not None:
                m.ttft.labels(model).set(obs.ttft_s)
        extra = {
            "model": model,
            "action": d.action,
            "reason": d.reason,
            "current": d.current,
            "desired": d.desired,
            "recommendation": d.recommendation,
            "detail": d.detail,
            "dry_run": self.dry_run,
        }
        (log.info if d.action != "hold" else log.debug)("autoscaler decision", extra=extra)
        if d.desired != current and not self.dry_run:
            try:
                await self.actuator.scale(d.desired)
            except ActuatorError as exc:
                m.errors.labels(model).inc()
                log.error("scaling failed; will retry next tick", extra={"model": model, "desired": d.desired, "error": str(exc)})
                return d
            self.policy.applied(now, d.desired)
        m.desired.labels(model).set(d.desired if not self.dry_run else current)
        return d

    async def run(self, stop: asyncio.Event | None = None, once: bool = False) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.step()
            except Exception:  # the loop must survive any one bad tick
                log.exception("autoscaler tick failed", extra={"model": self.model})
            if once:
                return
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, self.interval_s - (time.monotonic() - started)))
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.source.close()
        await self.actuator.close()
