"""PNG plots of a run (matplotlib, Agg backend: no display needed on a CI box).

- ``latency_cdf.png``: empirical CDFs of TTFT, TPOT, ITL and E2E latency, with p50/p99 marked.  A CDF shows the
  whole distribution: a bimodal TTFT (cache hits vs misses, warm vs cold replica) is visible at a glance where
  a mean would hide it.
- ``timeline.png``: over the run, the request rate (offered profile, sent, completed, failed), in-flight
  requests, per-request TTFT (dots, by send time, with the per-second mean), and the cluster's ready replicas
  (``GET /healthz`` / ``ListModels``) — the four curves an autoscaling test is read from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from loadtests.arrivals import parse_profile
from loadtests.clients.base import RequestResult
from loadtests.metrics import latency_samples
from loadtests.report import LATENCY_TITLES


def write_all(out: Path, result: dict[str, Any], results: Sequence[RequestResult]) -> list[Path]:
    return [latency_cdf(out / "latency_cdf.png", results, result), timeline(out / "timeline.png", results, result)]


def _title(result: dict[str, Any]) -> str:
    return f"{result.get('target', '')} · {result.get('mode', '')}, {result.get('arrivals', '')}"


def latency_cdf(path: Path, results: Sequence[RequestResult], result: dict[str, Any]) -> Path:
    samples = latency_samples(results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, name in zip(axes.flat, ("ttft", "tpot", "itl", "e2e"), strict=True):
        values = np.sort(np.asarray(samples[name], dtype=float) * 1000.0)
        ax.set_title(LATENCY_TITLES[name], fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples")
        ax.grid(True, alpha=0.3)
        if values.size == 0:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", lw=1.5)
        for p, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(values, p))
            ax.axvline(v, ls=style, color="gray", lw=1)
            ax.annotate(
                f"p{p} {v:.0f}", (v, 0.02 if p == 50 else 0.12), fontsize=8, color="dimgray", xytext=(3, 0), textcoords="offset points"
            )
        if values[0] > 0 and values[-1] / values[0] > 50:
            ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
    fig.suptitle(f"Latency CDFs — {_title(result)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _profile_curve(result: dict[str, Any], t_end: float) -> tuple[np.ndarray, np.ndarray] | None:
    cfg = result.get("config") or {}
    try:
        if cfg.get("profile"):
            prof = parse_profile(cfg["profile"])
        elif cfg.get("rate") and result.get("mode") == "open-loop" and not cfg.get("trace"):
            return np.array([0.0, t_end]), np.array([cfg["rate"], cfg["rate"]], dtype=float)
        else:
            return None
    except ValueError:
        return None
    t = np.linspace(0.0, max(t_end, 1.0), 400)
    return t, np.array([prof.rate_at(x) for x in t])


def timeline(path: Path, results: Sequence[RequestResult], result: dict[str, Any]) -> Path:
    ts = result["timeseries"]
    t = np.asarray(ts["t_s"], dtype=float) + ts["bin_s"] / 2
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ax = axes[0]
    offered = _profile_curve(result, float(result.get("duration_s") or 0.0))
    if offered is not None:
        ax.plot(*offered, color="black", lw=1, ls="--", label="offered rate")
    ax.plot(t, ts["sent_per_s"], drawstyle="steps-mid", label="sent")
    ax.plot(t, ts["completed_per_s"], drawstyle="steps-mid", label="completed")
    if any(ts["failed_per_s"]):
        ax.plot(t, ts["failed_per_s"], drawstyle="steps-mid", color="red", label="failed/dropped")
    ax.set_ylabel("requests/s")
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1]
    if ts["inflight"]:
        x, y = zip(*ts["inflight"], strict=True)
        ax.plot(x, y, drawstyle="steps-post", color="tab:purple")
    ax.set_ylabel("in-flight requests")

    ax = axes[2]
    pts = [(r.start_s, r.ttft_s * 1000.0) for r in results if r.ok and r.ttft_s is not None]
    if pts:
        x, y = zip(*pts, strict=True)
        ax.scatter(x, y, s=6, alpha=0.35, color="tab:blue", label="request")
    mean = [(tt, v) for tt, v in zip(t, ts["ttft_mean_ms"], strict=True) if v is not None]
    if mean:
        x, y = zip(*mean, strict=True)
        ax.plot(x, y, color="tab:orange", lw=1.5, label="mean per second")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_ylabel("TTFT (ms)")

    ax = axes[3]
    reps = [(tt, n) for tt, n in ts["ready_replicas"] if n is not None]
    if reps:
        x, y = zip(*reps, strict=True)
        ax.plot(x, y, drawstyle="steps-post", color="tab:green")
        ax.set_ylim(0, max(y) + 1)
        ax.yaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "the target exposes no ready-replica count", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("ready replicas")
    ax.set_xlabel("seconds since start")
    for a in axes:
        a.grid(True, alpha=0.3)
    end = float(result.get("duration_s") or 0.0)
    if end > 0 and math.isfinite(end):
        axes[-1].set_xlim(0, end)
    fig.suptitle(f"Over time — {_title(result)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
