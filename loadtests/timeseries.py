"""Time series of a run, for the "over time" plots and result.json's ``timeseries``.

Autoscaling tests need to see *when* things happened, not only the totals: the offered rate, how many
requests were in flight, what TTFT users got at that moment, and how many replicas the cluster had ready.
Counts are put in 1-second bins (vLLM's peak-throughput metric uses the same bins); in-flight requests and
ready replicas are sampled by the runner while it runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from loadtests.clients.base import RequestResult


def token_times(r: RequestResult) -> list[float]:
    """Arrival offsets of a successful request's output chunks: start + ttft, then + each ITL (as vLLM)."""
    if not r.ok or r.ttft_s is None:
        return []
    return list(r.start_s + r.ttft_s + np.concatenate(([0.0], np.cumsum(r.itl_s))))


def build(
    results: Sequence[RequestResult],
    duration_s: float,
    inflight: Sequence[tuple[float, int]],
    replicas: Sequence[tuple[float, int | None]],
    bin_s: float = 1.0,
) -> dict[str, object]:
    """The ``timeseries`` object of result.json (see loadtests/README.md for each key)."""
    n = max(1, math.ceil(duration_s / bin_s))

    def bins() -> np.ndarray:
        return np.zeros(n)

    sent, completed, failed, out_tok, ttft_sum, ttft_n = bins(), bins(), bins(), bins(), bins(), bins()

    def idx(t: float) -> int:
        return min(max(int(t // bin_s), 0), n - 1)

    for r in results:
        sent[idx(r.scheduled_s if r.error == "dropped_at_client" else r.start_s)] += 1
        if r.ok and r.end_s is not None:
            completed[idx(r.end_s)] += 1
            if r.ttft_s is not None:
                ttft_sum[idx(r.start_s)] += r.ttft_s
                ttft_n[idx(r.start_s)] += 1
            times = token_times(r)
            # Chunks carry one token each on llm-cluster; when usage says otherwise, spread the difference evenly.
            weight = r.output_tokens / len(times) if times else 0.0
            for t in times:
                out_tok[idx(t)] += weight
        else:
            failed[idx(r.start_s if r.start_s else r.scheduled_s)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        ttft_mean = np.where(ttft_n > 0, ttft_sum / np.maximum(ttft_n, 1) * 1000.0, np.nan)
    return {
        "bin_s": bin_s,
        "t_s": [round(i * bin_s, 3) for i in range(n)],
        "sent_per_s": (sent / bin_s).round(3).tolist(),
        "completed_per_s": (completed / bin_s).round(3).tolist(),
        "failed_per_s": (failed / bin_s).round(3).tolist(),
        "output_tokens_per_s": (out_tok / bin_s).round(3).tolist(),
        "ttft_mean_ms": [None if math.isnan(x) else round(float(x), 3) for x in ttft_mean],
        "inflight": [[round(t, 3), k] for t, k in inflight],
        "ready_replicas": [[round(t, 3), k] for t, k in replicas],
    }
