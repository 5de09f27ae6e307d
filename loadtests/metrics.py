"""Benchmark metrics, defined exactly as vLLM's ``vllm bench serve`` (vllm/benchmarks/serve.py, calculate_metrics).

Per successful request (see :mod:`loadtests.clients.base` for how the times are taken):

- **TTFT**: time from sending the request to the first output chunk.
- **TPOT**: ``(e2e - ttft) / (output_tokens - 1)``, only for requests with more than one output token.
- **ITL**: every gap between consecutive output chunks, pooled over all requests.
- **E2E latency** (vLLM's E2EL): time from sending to the last chunk.

Over the run, with ``duration`` = the benchmark duration (vLLM: from the start of the run until the last
request has finished, so it includes the tail after the last arrival):

- request throughput = successful requests / duration; output-token throughput = output tokens of
  successful requests / duration; total-token throughput adds their prompt tokens.
- **goodput** = successful requests meeting *every* given SLO (``--slo ttft=1s,tpot=50ms,e2e=10s``) /
  duration.  As in vLLM, a request with a single output token has TPOT 0 for the goodput test.
- statistics: mean, median, std and the requested percentiles (``numpy.percentile``, linear interpolation,
  like vLLM).  One difference: with no sample at all (e.g. every request failed) vLLM reports 0 and we report
  null, so "no data" cannot be mistaken for "instant".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from loadtests.clients.base import RequestResult

DEFAULT_PERCENTILES: tuple[float, ...] = (50, 90, 95, 99)
SLO_METRICS = ("ttft", "tpot", "itl_mean", "e2e")
_SLO_ALIASES = {"e2el": "e2e", "latency": "e2e", "itl": "itl_mean"}
_UNITS = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "m": 60.0}


def parse_duration(text: str, default_unit: str = "s") -> float:
    """``50ms``, ``1.5s``, ``200us``, ``2m`` or a bare number in ``default_unit``; returns seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|s|m)?\s*", text)
    if not m:
        raise ValueError(f"duration {text!r}: expected a number with an optional unit (ms, s, us, m)")
    return float(m.group(1)) * _UNITS[m.group(2) or default_unit]


def parse_slo(text: str) -> dict[str, float]:
    """``ttft=1s,tpot=50ms,e2e=10s`` → seconds per metric.  A bare number is milliseconds (vLLM's --goodput)."""
    slo: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            key, sep, value = part.partition(":")  # vLLM's "ttft:500" form
        key = _SLO_ALIASES.get(key.strip().lower(), key.strip().lower())
        if not sep or key not in SLO_METRICS:
            raise ValueError(f"SLO {part!r}: expected METRIC=VALUE with METRIC one of {', '.join(SLO_METRICS)}")
        seconds = parse_duration(value, default_unit="ms")
        if seconds <= 0:
            raise ValueError(f"SLO {part!r}: the limit must be > 0")
        slo[key] = seconds
    if not slo:
        raise ValueError("empty SLO")
    return slo


def percentile(values: Sequence[float], p: float) -> float:
    """numpy's linear-interpolation percentile (vLLM uses np.percentile the same way)."""
    if not len(values):
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=float), p))


def pct_key(p: float) -> str:
    """99 → "p99", 99.9 → "p99.9"."""
    return f"p{p:g}"


def dist_stats(values_s: Sequence[float], percentiles: Iterable[float] = DEFAULT_PERCENTILES) -> dict[str, float | int | None]:
    """count, mean, median, std, min, max and pNN of values given in seconds, reported in milliseconds."""
    ps = list(percentiles)
    if not len(values_s):
        return {"count": 0, "mean": None, "median": None, "std": None, "min": None, "max": None} | {pct_key(p): None for p in ps}
    a = np.asarray(values_s, dtype=float) * 1000.0
    out: dict[str, float | int | None] = {
        "count": int(a.size),
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }
    for p in ps:
        out[pct_key(p)] = float(np.percentile(a, p))
    return out


def request_values(r: RequestResult) -> dict[str, float]:
    """The per-request values an SLO can constrain, in seconds (TPOT 0 for one-token answers, as vLLM)."""
    vals = {"ttft": r.ttft_s or 0.0, "tpot": r.tpot_s or 0.0, "e2e": r.e2e_s or 0.0}
    vals["itl_mean"] = float(np.mean(r.itl_s)) if r.itl_s else 0.0
    return vals


def is_good(r: RequestResult, slo: dict[str, float]) -> bool:
    """Successful and within every SLO (limits inclusive, as vLLM's ``s >= r``)."""
    if not r.ok:
        return False
    vals = request_values(r)
    return all(vals[k] <= limit for k, limit in slo.items())


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The run-level numbers of result.json, computed from the per-request results."""

    completed: int
    failed: int
    dropped: int
    input_tokens: int
    output_tokens: int
    cached_prompt_tokens: int | None
    duration_s: float
    good: int | None

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def total_token_throughput(self) -> float:
        return (self.input_tokens + self.output_tokens) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def goodput(self) -> float | None:
        if self.good is None:
            return None
        return self.good / self.duration_s if self.duration_s > 0 else 0.0


def aggregate(results: Sequence[RequestResult], duration_s: float, slo: dict[str, float] | None = None) -> Aggregate:
    ok = [r for r in results if r.ok]
    cached = [r.cached_prompt_tokens for r in ok if r.cached_prompt_tokens is not None]
    return Aggregate(
        completed=len(ok),
        failed=sum(1 for r in results if not r.ok and r.error != "dropped_at_client"),
        dropped=sum(1 for r in results if r.error == "dropped_at_client"),
        input_tokens=sum(r.prompt_tokens for r in ok),
        output_tokens=sum(r.output_tokens for r in ok),
        cached_prompt_tokens=sum(cached) if cached else None,
        duration_s=duration_s,
        good=sum(1 for r in ok if is_good(r, slo)) if slo else None,
    )


def latency_samples(results: Sequence[RequestResult]) -> dict[str, list[float]]:
    """Seconds per metric over successful requests: ttft, tpot (> 1 token only), itl (pooled), e2e."""
    ok = [r for r in results if r.ok]
    return {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "tpot": [t for r in ok if (t := r.tpot_s) is not None],
        "itl": [x for r in ok for x in r.itl_s],
        "e2e": [r.e2e_s for r in ok if r.e2e_s is not None],
    }


def errors_by_kind(results: Sequence[RequestResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        if not r.ok and r.error:
            counts[r.error] = counts.get(r.error, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def peak_concurrency(results: Sequence[RequestResult]) -> int:
    """Most successful requests in flight at once (vLLM's max_concurrent_requests: sweep over [start, end))."""
    events = sorted((t, d) for r in results if r.ok and r.end_s is not None for t, d in ((r.start_s, 1), (r.end_s, -1)))
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x
