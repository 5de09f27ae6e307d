"""Metrics source: scrape the replicas' (and the router's) /metrics directly.

The fallback when no Prometheus is configured.  Targets are a static list of
URLs or a ``discover()`` callable (the Ray controller's ``/sd/replicas``).
Gauges are read as they are; rates (token throughput) and the TTFT quantile
are computed from the difference between this scrape and the previous one,
so the first observation has no rate and no TTFT (None: the policy holds on
what it needs).

Failure modes: a replica that does not answer (timeout, refused) is simply not
reporting this round; the router not answering -> demand and known replicas
unknown.  Nothing is raised for a single bad target.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cluster.autoscaler.sources.base import MetricsSource
from cluster.autoscaler.types import Observation

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Discover = Callable[[], Awaitable[list[str]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    vals = [v for (n, lab), v in samples.items() if n == name and want <= set(lab)]
    return sum(vals) if vals else None


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts {le: count}."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        c = buckets[b]
        if c >= rank:
            if math.isinf(b):
                return prev_bound
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / (c - prev_count) if c > prev_count else 1.0)
        prev_bound, prev_count = b, c
    return prev_bound


def _buckets(samples: Samples, name: str, model: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for (n, lab), v in samples.items():
        d = dict(lab)
        if n == name and d.get("model") == model and "le" in d:
            le = float(d["le"])
            out[le] = out.get(le, 0.0) + v
    return out


class ScrapeSource(MetricsSource):
    kind = "scrape"

    def __init__(
        self,
        targets: list[str] | None = None,
        *,
        discover: Discover | None = None,
        router_url: str | None = None,
        ttft_quantile: float = 0.9,
        timeout_s: float = 3.0,
    ) -> None:
        if not targets and discover is None and router_url is None:
            raise ValueError("scrape source: give replica targets, a discover function or a router URL")
        self.targets = list(targets or [])
        self.discover = discover
        self.router_url = router_url
        self.quantile = ttft_quantile
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._prev: dict[str, tuple[float, Samples]] = {}

    async def _get(self, url: str) -> Samples | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.get(url) as r:
                if r.status != 200:
                    return None
                return parse(await r.text())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    def _delta(self, key: str, now: float, samples: Samples) -> tuple[float, Samples] | None:
        """(seconds, counter increases) since this target's previous scrape."""
        prev = self._prev.get(key)
        self._prev[key] = (now, samples)
        if prev is None or now <= prev[0]:
            return None
        return now - prev[0], {k: v - prev[1].get(k, 0.0) for k, v in samples.items() if v - prev[1].get(k, 0.0) >= 0}

    async def observe(self, model: str) -> Observation:
        urls = list(self.targets)
        if self.discover is not None:
            try:
                urls = await self.discover()
            except Exception:
                urls = list(self.targets)
        now = time.time()
        results = await asyncio.gather(*(self._get(u) for u in urls))
        router = await self._get(self.router_url) if self.router_url else None
        load = kv = tokens = running_sum = 0.0
        reporting = 0
        rates = 0
        replica_ttft: dict[float, float] = {}
        for url, s in zip(urls, results, strict=True):
            if s is None:
                continue
            running = pick(s, "vllm:num_requests_running", model=model)
            if running is None:
                continue  # another model's replica
            reporting += 1
            running_sum += running
            load += running + (pick(s, "vllm:num_requests_waiting", model=model) or 0.0)
            kv += pick(s, "vllm:kv_cache_usage_perc", model=model) or 0.0
            d = self._delta(url, now, s)
            if d is not None:
                rates += 1
                tokens += (pick(d[1], "vllm:generation_tokens_total", model=model) or 0.0) / d[0]
                for le, c in _buckets(d[1], "vllm:time_to_first_token_seconds_bucket", model).items():
                    replica_ttft[le] = replica_ttft.get(le, 0.0) + c
        known: int | None = len(urls) if self.router_url is None else None
        demand = ttft = completions = None
        if router is not None:
            known_v = pick(router, "llm_cluster_router_replicas_known", model=model)
            known = int(known_v) if known_v is not None else None
            demand = pick(router, "llm_cluster_router_waiting_for_replica", model=model) or 0.0
            d = self._delta("router", now, router)
            if d is not None:
                ttft = histogram_quantile(self.quantile, _buckets(d[1], "llm_cluster_router_time_to_first_token_seconds_bucket", model))
                completions = (pick(d[1], "llm_cluster_router_requests_total", model=model) or 0.0) / d[0]
        elif replica_ttft:
            ttft = histogram_quantile(self.quantile, replica_ttft)
        fresh = reporting > 0 or router is not None
        return Observation(
            at=now if fresh else 0.0,
            known_replicas=known,
            reporting_replicas=reporting,
            load=load if reporting else (0.0 if known == 0 else None),
            kv_usage=kv / reporting if reporting else None,
            token_throughput=tokens if rates else None,
            ttft_s=ttft,
            demand=demand,
            running=running_sum if reporting else None,
            completion_rate=completions,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
