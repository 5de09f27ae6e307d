"""Metrics source: the Prometheus HTTP API, with PromQL from config.

Each signal is one instant query (``/api/v1/query``); ``{model}`` and
``{window}`` in a query are substituted.  Freshness comes from the samples'
own scrape times (``timestamp(...)``), not from the query's evaluation time:
Prometheus answers an instant query with the last sample of up to 5 minutes
ago, so a replica that stopped reporting would otherwise look current.

Failure modes: Prometheus unreachable or a query error -> SourceError (the
loop holds); a series that is absent -> that field is None (the policy holds
on whatever it needs); NaN (histogram_quantile without traffic) -> None.
"""

from __future__ import annotations

import math
import time

import aiohttp

from cluster.autoscaler.sources.base import MetricsSource, SourceError
from cluster.autoscaler.types import Observation

#: Defaults; each equals a recording rule in deploy/prometheus/rules.yml (same expression).
DEFAULT_QUERIES = {
    # Per replica, so freshness can be judged per series.
    "load": 'sum by (replica) (vllm:num_requests_running{model="{model}"} + vllm:num_requests_waiting{model="{model}"})',
    "kv_usage": 'avg(vllm:kv_cache_usage_perc{model="{model}"})',
    "token_throughput": 'sum(rate(vllm:generation_tokens_total{model="{model}"}[{window}]))',
    "ttft": (
        "histogram_quantile({quantile}, sum by (le) "
        '(rate(llm_cluster_router_time_to_first_token_seconds_bucket{model="{model}"}[{window}])))'
    ),
    "demand": 'sum(llm_cluster_router_waiting_for_replica{model="{model}"})',
    "replicas": 'max(llm_cluster_router_replicas_known{model="{model}"})',
    "running": 'sum(vllm:num_requests_running{model="{model}"})',
    "completions": 'sum(rate(llm_cluster_router_requests_total{model="{model}"}[{window}]))',
}
#: Scrape time of every replica's load series, and of the router's.
_FRESHNESS = {
    "replica": 'timestamp(vllm:num_requests_running{model="{model}"})',
    "router": 'timestamp(llm_cluster_router_waiting_for_replica{model="{model}"})',
}


def render(query: str, **values: str) -> str:
    # str.format would trip over PromQL's own braces; substitute our placeholders only.
    for k, v in values.items():
        query = query.replace("{" + k + "}", v)
    return query


class PrometheusSource(MetricsSource):
    kind = "prometheus"

    def __init__(
        self,
        url: str,
        queries: dict[str, str] | None = None,
        *,
        window: str = "1m",
        ttft_quantile: float = 0.9,
        stale_after_s: float = 30.0,
        timeout_s: float = 3.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.queries = DEFAULT_QUERIES | (queries or {})
        self.window = window
        self.quantile = ttft_quantile
        self.stale_after_s = stale_after_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def _query(self, promql: str) -> list[tuple[dict[str, str], float, float]]:
        """(labels, sample time, value) per series of an instant query."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.get(f"{self.url}/api/v1/query", params={"query": promql}) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SourceError(f"prometheus {self.url}: {exc!r}") from None
        if body.get("status") != "success":
            raise SourceError(f"prometheus query failed ({body.get('errorType')}): {body.get('error')} in {promql!r}")
        data = body["data"]
        if data["resultType"] == "scalar":
            t, v = data["result"]
            return [({}, float(t), float(v))]
        return [(s["metric"], float(s["value"][0]), float(s["value"][1])) for s in data["result"]]

    async def _one(self, name: str, model: str) -> float | None:
        rows = await self._query(self._render(self.queries[name], model))
        if not rows:
            return None
        v = sum(value for _, _, value in rows)
        return None if math.isnan(v) else v

    def _render(self, q: str, model: str) -> str:
        return render(q, model=model, window=self.window, quantile=str(self.quantile))

    async def observe(self, model: str) -> Observation:
        now = time.time()
        fresh_at = {
            s.get("replica", str(i)): value
            for i, (s, _, value) in enumerate(await self._query(self._render(_FRESHNESS["replica"], model)))
            if now - value <= self.stale_after_s
        }
        router_times = [v for _, _, v in await self._query(self._render(_FRESHNESS["router"], model)) if now - v <= self.stale_after_s]
        load_rows = await self._query(self._render(self.queries["load"], model))
        # Per-replica rows count only when that replica is fresh; a label-less
        # (custom, pre-summed) row counts when any replica is.
        load_vals = [v for labels, _, v in load_rows if ("replica" not in labels and fresh_at) or labels.get("replica") in fresh_at]
        known = await self._one("replicas", model)
        demand = await self._one("demand", model)
        if not router_times:
            known = demand = None
        load = sum(load_vals) if load_vals else None
        if load is None and known == 0:
            load = 0.0  # no replica to report, and the router confirms there is none
        stamps = list(fresh_at.values()) + router_times
        return Observation(
            at=max(stamps) if stamps else 0.0,
            known_replicas=None if known is None else int(known),
            reporting_replicas=len(fresh_at),
            load=load,
            kv_usage=await self._one("kv_usage", model) if fresh_at else None,
            token_throughput=await self._one("token_throughput", model) if fresh_at else None,
            ttft_s=await self._one("ttft", model),
            demand=demand,
            running=await self._one("running", model) if fresh_at else None,
            completion_rate=await self._one("completions", model) if router_times else None,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
