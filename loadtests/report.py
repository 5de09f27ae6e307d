"""Results: the ``result.json`` object, the summary table, and the files written under ``--out``.

result.json has stable keys (documented in loadtests/README.md, versioned by ``schema_version``) so that CI
jobs and dashboards can read it without parsing the table.  Latencies are in milliseconds, like vLLM's
``*_ms`` fields; rates per second; raw per-request records go to ``requests.jsonl`` beside it, from which the
plots can be redrawn (``python -m loadtests plot DIR``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import SCHEMA_VERSION, timeseries
from loadtests.clients.base import DROPPED, RequestResult
from loadtests.metrics import (
    DEFAULT_PERCENTILES,
    aggregate,
    dist_stats,
    errors_by_kind,
    latency_samples,
    peak_concurrency,
)
from loadtests.runner import RunOutcome

LATENCY_TITLES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2e": "End-to-end Latency",
}


@dataclass(slots=True)
class RunInfo:
    """What was run, for the report header (everything the outcome itself does not know)."""

    target: str
    client: str  # "http" | "grpc"
    api: str
    mode: str  # "open-loop" | "closed-loop"
    arrivals: str
    workload: str
    seed: int
    scheduled: int  # requests in the schedule (open loop) or sent (closed loop)
    window_s: float | None  # the arrival window: --duration, or the last scheduled send time
    config: dict[str, Any]


def build_result(
    info: RunInfo,
    outcome: RunOutcome,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slo: dict[str, float] | None = None,
) -> dict[str, Any]:
    results = outcome.results
    agg = aggregate(results, outcome.duration_s, slo)
    samples = latency_samples(results)
    ts = timeseries.build(results, outcome.duration_s, outcome.inflight, outcome.replicas)
    lags = [(r.start_s - r.scheduled_s) for r in results if r.error != DROPPED and r.start_s]
    sent = len(results)
    goodput = None
    if slo:
        goodput = {
            "slo_ms": {k: round(v * 1000, 3) for k, v in slo.items()},
            "good_requests": agg.good,
            "requests_per_s": agg.goodput,
            "fraction_of_sent": (agg.good or 0) / sent if sent else None,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "loadtests",
        "started_at": dt.datetime.fromtimestamp(outcome.started_at, dt.UTC).isoformat(timespec="seconds"),
        "target": info.target,
        "client": info.client,
        "api": info.api,
        "model": outcome.model,
        "mode": info.mode,
        "arrivals": info.arrivals,
        "workload": info.workload,
        "seed": info.seed,
        "interrupted": outcome.interrupted,
        "duration_s": outcome.duration_s,
        "requests": {
            "scheduled": info.scheduled,
            "sent": sum(1 for r in results if r.error != DROPPED),
            "completed": agg.completed,
            "failed": agg.failed,
            "dropped_at_client": agg.dropped,
            "success_rate": agg.completed / sent if sent else None,
        },
        "tokens": {
            "input": agg.input_tokens,
            "output": agg.output_tokens,
            "cached_prompt": agg.cached_prompt_tokens,
            "mean_input_per_request": agg.input_tokens / agg.completed if agg.completed else None,
            "mean_output_per_request": agg.output_tokens / agg.completed if agg.completed else None,
        },
        "throughput": {
            "offered_requests_per_s": info.scheduled / info.window_s if info.window_s else None,
            "requests_per_s": agg.request_throughput,
            "output_tokens_per_s": agg.output_throughput,
            "total_tokens_per_s": agg.total_token_throughput,
            "peak_output_tokens_per_s": max(ts["output_tokens_per_s"], default=0.0),  # type: ignore[type-var]
            "peak_concurrent_requests": peak_concurrency(results),
        },
        "latency_ms": {name: dist_stats(values, percentiles) for name, values in samples.items()},
        "goodput": goodput,
        "errors": errors_by_kind(results),
        "client_send_lag_ms": dist_stats(lags, (99,)) if lags else None,
        "timeseries": ts,
        "config": info.config,
        "files": {},
    }


def _fmt(x: object, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def format_table(result: dict[str, Any]) -> str:
    """The end-of-run summary, laid out like vLLM's "Serving Benchmark Result" so figures read the same."""
    w = 42
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=w + 10, c="=")]

    def row(label: str, value: object, digits: int = 2) -> None:
        lines.append(f"{label:<{w}}{_fmt(value, digits)}")

    req, tok, thr = result["requests"], result["tokens"], result["throughput"]
    row("Target:", f"{result['target']} ({result['client']}, {result['api']})")
    row("Model:", result["model"])
    row("Load:", f"{result['mode']}, {result['arrivals']}")
    row("Workload:", result["workload"])
    row("Scheduled requests:", req["scheduled"])
    row("Successful requests:", req["completed"])
    row("Failed requests:", req["failed"])
    row("Dropped at client (--max-inflight):", req["dropped_at_client"])
    for kind, n in result["errors"].items():
        row(f"  {kind}:", n)
    row("Benchmark duration (s):", result["duration_s"])
    row("Total input tokens:", tok["input"])
    row("Total generated tokens:", tok["output"])
    if tok["cached_prompt"] is not None:
        row("Cached prompt tokens (server):", tok["cached_prompt"])
    row("Offered rate (req/s):", thr["offered_requests_per_s"])
    row("Request throughput (req/s):", thr["requests_per_s"])
    row("Output token throughput (tok/s):", thr["output_tokens_per_s"])
    row("Peak output token throughput (tok/s):", thr["peak_output_tokens_per_s"])
    row("Peak concurrent requests:", thr["peak_concurrent_requests"])
    row("Total token throughput (tok/s):", thr["total_tokens_per_s"])
    if result["goodput"] is not None:
        g = result["goodput"]
        slo = ", ".join(f"{k}<={v:g}ms" for k, v in g["slo_ms"].items())
        row(f"Goodput (req/s) [{slo}]:", g["requests_per_s"])
        row("Requests within SLO:", f"{g['good_requests']} ({_fmt(100 * (g['fraction_of_sent'] or 0.0), 1)}% of sent)")
    for name, stats in result["latency_ms"].items():
        lines.append("{s:{c}^{n}}".format(s=LATENCY_TITLES[name], n=w + 10, c="-"))
        label = name.upper()
        row(f"Mean {label} (ms):", stats["mean"])
        row(f"Median {label} (ms):", stats["median"])
        for key in (k for k in stats if k.startswith("p")):
            row(f"{key.upper()} {label} (ms):", stats[key])
    lag = result.get("client_send_lag_ms")
    if lag and lag.get("max") is not None and lag["max"] > 50:
        lines.append(f"note: the client sent up to {lag['max']:.0f} ms late (p99 {lag['p99']:.0f} ms): it may be the bottleneck")
    if result["interrupted"]:
        lines.append("note: interrupted; figures cover what finished before Ctrl-C")
    lines.append("=" * (w + 10))
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, result: dict[str, Any], results: Sequence[RequestResult], *, plots: bool = True) -> dict[str, Any]:
    """Write requests.jsonl, the plots and result.json (last, with ``files`` filled in); returns ``files``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "requests.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r.to_record()) + "\n")
    files: dict[str, Any] = {"result": "result.json", "requests": "requests.jsonl", "plots": []}
    if plots:
        from loadtests import plots as plotting  # matplotlib is imported only when plots are wanted

        files["plots"] = [p.name for p in plotting.write_all(out, result, results)]
    result["files"] = {**result.get("files", {}), **files}
    (out / "result.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n")
    return result["files"]


def _jsonable(x: Any) -> Any:
    """NaN/inf → null and numpy scalars → Python, so result.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    return x
