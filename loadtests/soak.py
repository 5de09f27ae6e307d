"""Soak: a long run at 70% load over sim replicas, reporting memory growth and leaked in-flight entries.

    python -m loadtests.soak --duration-s 1800            # the 30-minute run (target: < 5% growth, 0 leaks)
    python -m loadtests.soak --duration-s 60 --out soak.json

The router and each sim replica are the real commands (``llm-cluster router``,
``llm-cluster replica --engine sim``), each in its own process (real gRPC
between them, the router's HTTP API in front), so each one's memory is
measured alone.  What each still holds is read from its ``/metrics``:

- router: ``llm_cluster_router_held_requests`` by layer (the gate's admission
  slots and waiters, tenant in-flight counts, the balancer's and the replica
  handles' in-flight counts);
- replica: ``llm_cluster_replica_in_flight_requests`` (the server's in-flight
  requests) and the engine's ``vllm:num_requests_running`` / ``_waiting``.

Phases: calibrate (mean service time at low load) → warm-up (allocator and
caches settle; the memory baseline is taken at its end) → the run, open loop
(Poisson) at ``load`` x the router's admission slots / service time → drain →
final figures.  Growth is (RSS at the end - baseline) / baseline per process;
leaks are counted after the drain, when nothing may be in flight.  The exit
status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from loadtests.openloop import open_loop, percentile
from loadtests.procs import Procs, free_port, start_router, wait_port
from loadtests.workloads import RequestSpec

# ---- the processes -----------------------------------------------------------
REPLICA_HELD = {
    "in_flight": "llm_cluster_replica_in_flight_requests",
    "engine_running": "vllm:num_requests_running",
    "engine_waiting": "vllm:num_requests_waiting",
}


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, summed over labels, by sample name (and by ``layer`` for the router's held requests)."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f":{sample.labels['layer']}" if "layer" in sample.labels else "")
            out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass
class Child:
    """One command of the cluster, running: its process and its /metrics URL."""

    name: str
    proc: subprocess.Popen
    metrics_url: str

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def held(self) -> dict[str, int]:
        m = scrape(self.metrics_url)
        if self.name == "router":
            prefix = "llm_cluster_router_held_requests:"
            return {k.removeprefix(prefix): int(v) for k, v in m.items() if k.startswith(prefix) and v}
        return {k: int(m.get(name, 0)) for k, name in REPLICA_HELD.items() if m.get(name, 0)}

    def stats(self) -> dict[str, Any]:
        return {"rss_bytes": self.rss(), "held": self.held()}


def start_replica(procs: Procs, i: int, sim: dict[str, Any]) -> tuple[Child, str]:
    """``llm-cluster replica --engine sim`` with its metrics port; (child, gRPC address)."""
    args = ["replica", "--engine", "sim", "--set", "models.0.name=sim", "--set", f"models.0.engine_args={json.dumps(sim)}"]
    p = procs.spawn([*args, "--port", "0", "--metrics-port", "0"])
    assert p.stdout is not None
    lines = [p.stdout.readline(), p.stdout.readline()]
    addr = re.search(r"on ([\d.]+:\d+)", lines[0])
    murl = re.search(r"(http://[\d.]+:\d+/metrics)", lines[1])
    if not addr or not murl:
        raise RuntimeError(f"replica {i} did not start: {lines!r}")
    return Child(f"replica-{i}", p, murl.group(1)), addr.group(1)


def start_router_child(procs: Procs, replicas: list[str], slots_per_replica: int) -> tuple[Child, int]:
    """``llm-cluster router`` over ``replicas``; (child, HTTP port)."""
    mport = free_port()
    _, http_port = start_router(
        procs,
        replicas,
        overrides=[
            "models.0.name=sim",
            "router.workers=1",  # one router process: its memory measured alone, its admission slots as computed
            f"router.metrics_port={mport}",
            f"router.admission.max_concurrent_per_replica={slots_per_replica}",
            "router.admission.queue_timeout_s=5.0",
        ],
    )
    wait_port(mport)
    return Child("router", procs.procs[-1], f"http://127.0.0.1:{mport}/metrics"), http_port


# ---- the run ------------------------------------------------------------------
@dataclass
class SoakConfig:
    duration_s: float = 1800.0
    replicas: int = 2
    load: float = 0.7
    slots_per_replica: int = 8
    output_tokens: int = 64
    time_scale: float = 1.0
    warmup_s: float | None = None  # default: 10% of the duration, 10..120 s
    sample_every_s: float = 10.0
    growth_target: float = 0.05


def _spec(cfg: SoakConfig):
    return lambda i: RequestSpec(
        prompt=f"soak request {i}: " + "lorem ipsum " * (8 + i % 24), prompt_tokens=30, output_tokens=cfg.output_tokens
    )


async def run_soak(cfg: SoakConfig, progress: bool = True) -> dict[str, Any]:
    sim = {"time_scale": cfg.time_scale, "seed": 0}
    procs = Procs()
    try:
        started = [start_replica(procs, i, {**sim, "seed": i}) for i in range(cfg.replicas)]
        router, port = start_router_child(procs, [addr for _, addr in started], cfg.slots_per_replica)
        children = [router, *(child for child, _ in started)]
        run = await _drive(cfg, children, port, progress)
        await asyncio.sleep(1.0)  # let cancellations and channel closes settle
        final = await asyncio.to_thread(lambda: {c.name: c.stats() for c in children})
    finally:
        procs.stop()
    return _report(cfg, run, final)


async def _drive(cfg: SoakConfig, children: list[Child], port: int, progress: bool) -> dict[str, Any]:
    """Calibrate, warm up (then the memory baseline), and the measured run with RSS sampled along."""
    from loadtests.clients.openai_http import OpenAIHTTPClient

    client = OpenAIHTTPClient(f"http://127.0.0.1:{port}", api="completions")
    await client.open()
    spec = _spec(cfg)
    try:
        # Calibrate: mean service time at low load.
        cal = await open_loop(client, "sim", rate=2.0, duration_s=4.0, spec=spec, seed=1)
        service_s = sum(r.e2e_s or 0 for r in cal if r.ok) / max(1, sum(r.ok for r in cal))
        slots = cfg.replicas * cfg.slots_per_replica
        rate = cfg.load * slots / max(service_s, 1e-3)
        warmup = cfg.warmup_s if cfg.warmup_s is not None else min(120.0, max(10.0, cfg.duration_s * 0.1))
        await open_loop(client, "sim", rate=rate, duration_s=warmup, spec=spec, seed=2)
        base = {c.name: c.rss() for c in children}
        timeline: list[dict[str, Any]] = []
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(_sample_rss(cfg, children, timeline, stop_sampling, progress))
        results = await open_loop(client, "sim", rate=rate, duration_s=cfg.duration_s, spec=spec, timeout_s=60, seed=3)
        stop_sampling.set()
        await sampling
    finally:
        await client.close()
    return {"results": results, "base": base, "timeline": timeline, "service_s": service_s, "rate": rate, "warmup": warmup, "slots": slots}


async def _sample_rss(cfg: SoakConfig, children: list[Child], timeline: list[dict[str, Any]], stop: asyncio.Event, progress: bool) -> None:
    from tqdm import tqdm

    t0 = time.monotonic()
    with tqdm(total=int(cfg.duration_s), unit="s", desc="soak", disable=not progress) as bar:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.sample_every_s)
            el = time.monotonic() - t0
            bar.update(min(int(el), int(cfg.duration_s)) - bar.n)
            stats = await asyncio.to_thread(lambda: {c.name: c.rss() for c in children})
            timeline.append({"t_s": round(el, 1), **{k: round(v / 2**20, 1) for k, v in stats.items()}})


def _report(cfg: SoakConfig, run: dict[str, Any], final: dict[str, dict[str, Any]]) -> dict[str, Any]:
    results, base = run["results"], run["base"]
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    refused = 0
    for r in results:
        if r.ok:
            continue
        if r.error == "http_429":  # a clean refusal (a burst filled the queue), not a failure
            refused += 1
        else:
            errors[r.error or "?"] = errors.get(r.error or "?", 0) + 1
    growth = {name: (final[name]["rss_bytes"] - base[name]) / base[name] for name in base}
    leaks: dict[str, Any] = {name: f["held"] for name, f in final.items() if f["held"]}
    leaked = sum(sum(v.values()) for v in leaks.values())
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    report = {
        "duration_s": cfg.duration_s,
        "warmup_s": run["warmup"],
        "replicas": cfg.replicas,
        "slots": run["slots"],
        "service_s": round(run["service_s"], 3),
        "offered_rps": round(run["rate"], 2),
        "load": cfg.load,
        "sent": len(results),
        "completed": len(ok),
        "refused_429": refused,
        "errors": errors,
        "ttft_p50_s": round(percentile(ttft, 50), 3),
        "ttft_p99_s": round(percentile(ttft, 99), 3),
        "rss_baseline_mib": {k: round(v / 2**20, 1) for k, v in base.items()},
        "rss_final_mib": {k: round(v["rss_bytes"] / 2**20, 1) for k, v in final.items()},
        "rss_growth": {k: round(v, 4) for k, v in growth.items()},
        "leaks": leaks,
        "leaked_entries": leaked,
        "timeline_mib": run["timeline"],
    }
    report["pass"] = leaked == 0 and all(g < cfg.growth_target for g in growth.values()) and not errors
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=1800.0, help="length of the measured run (default 1800)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--load", type=float, default=0.7, help="offered load as a fraction of the router's admission slots (default 0.7)")
    p.add_argument("--slots-per-replica", type=int, default=8, help="router.admission.max_concurrent_per_replica")
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--time-scale", type=float, default=1.0, help="sim engine time scale (1.0: SmolLM2 on 2 CPU cores)")
    p.add_argument("--warmup-s", type=float, default=None, help="default: 10%% of the duration, 10..120 s")
    p.add_argument("--growth-target", type=float, default=0.05, help="max RSS growth per process (default 0.05)")
    p.add_argument("--out", default=None, help="write the JSON report, with the memory timeline, here too")
    args = p.parse_args(argv)
    cfg = SoakConfig(
        duration_s=args.duration_s,
        replicas=args.replicas,
        load=args.load,
        slots_per_replica=args.slots_per_replica,
        output_tokens=args.output_tokens,
        time_scale=args.time_scale,
        warmup_s=args.warmup_s,
        growth_target=args.growth_target,
        sample_every_s=max(1.0, min(30.0, args.duration_s / 60)),
    )
    # SIGTERM unwinds like Ctrl-C, so the children are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = asyncio.run(run_soak(cfg, progress=sys.stderr.isatty()))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "timeline_mib"}, indent=2))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
