"""Autoscaling: SLO attainment and replica-seconds of the autoscaler vs a fixed peak-sized fleet vs an oracle.

    python -m loadtests.bench.autoscale [--speed 5] [--startup 20] [--slo 2.0] [--json out.json]

Two scenarios, in trace seconds (the run is ``--speed`` times faster: the sim engines' ``time_scale`` and
every delay are divided by it, and figures are reported back in trace seconds):

- **bursty**: a daily-shape ramp (3 -> 12 req/s and back) with two sharp 2x bursts, 600 s;
- **step**: 3 req/s, then a 10x step to 30 req/s for 120 s, then back.

Each runs three fleets of sim replicas behind one in-process least-loaded dispatcher
(:mod:`loadtests.bench.autoscale_fleet`), with a modelled replica start-up delay (``--startup``, a GPU replica
loading weights): **autoscaler** (this repo's loop and target-tracking policy, fed the fleet's own load figures
every ``--interval`` s, scaling the fleet through the Actuator interface; scale-down drains), **fixed** (the
oracle's peak count, warm from the start), and **oracle** (knows the trace: each second it sets the count the rate
``startup`` seconds ahead needs). A replica costs replica-seconds from the moment it is asked for (starting) until
it has drained.

Printed per fleet: requests, failed, SLO attainment (TTFT <= SLO and no error), TTFT p50/p99, replica-seconds
and the ratio to the oracle's; for the step: the time from the step until TTFT is back under the SLO (p90 of
2 s arrival windows, for good), against the target of start-up + 10 s.

The engine model is the sim's, with a faster prefill than its CPU default (a GPU-class replica): 8 sequences
at most per replica, 32 output tokens, ~0.7 s per request alone.  No gRPC, Ray or Prometheus here: this
measures the control loop and the policy against the trace, not transport (the integration test covers the
real stack).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from cluster.autoscaler.loop import Autoscaler
from cluster.autoscaler.policies import TargetTracking
from cluster.config import ScalingPolicyConfig
from loadtests.bench.autoscale_fleet import TARGET_LOAD, Fleet, Result

Rate = Callable[[float], float]


def bursty(t: float) -> float:
    base = 3 + 9 * max(0.0, math.sin(math.pi * min(max(t - 60, 0), 480) / 480))  # 3 -> 12 -> 3 over 60..540 s
    if 200 <= t < 230 or 380 <= t < 400:
        base *= 2
    return base


def step(t: float) -> float:
    return 30.0 if 60 <= t < 180 else 3.0


SCENARIOS: dict[str, tuple[Rate, float, float | None]] = {"bursty": (bursty, 600.0, None), "step": (step, 240.0, 60.0)}


def arrivals(rate: Rate, duration: float, seed: int) -> list[float]:
    """Non-homogeneous Poisson arrivals by thinning."""
    rng = random.Random(seed)
    peak = max(rate(t / 10) for t in range(int(duration * 10))) * 1.01
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return out
        if rng.random() < rate(t) / peak:
            out.append(t)


#: Seconds a request spends in a replica without queueing; measured by ``calibrate`` before the runs.
SERVICE_S = 0.75


def oracle_count(rate: Rate, t: float, startup: float) -> int:
    # Little's law at the engine: concurrency = rate x time in service, at the autoscaler's target per replica.
    ahead = max(rate(x) for x in (t, t + startup / 2, t + startup))
    return max(1, math.ceil(ahead * SERVICE_S / TARGET_LOAD))


async def calibrate(args: argparse.Namespace) -> float:
    """Mean time in service of one request on a replica at about the target load (the oracle's W)."""
    fleet = Fleet(speed=args.speed, startup=args.startup)
    fleet.t0 = time.monotonic()
    await fleet.scale(1, warm=True)
    rate = TARGET_LOAD / SERVICE_S
    results, tasks = [], []
    for i, t in enumerate(arrivals(lambda _: rate, 30.0, seed=99)):
        delay = fleet.t0 + t / args.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        results.append(Result(t))
        tasks.append(asyncio.create_task(fleet.request(i, t, results[-1])))
    await asyncio.gather(*tasks)
    await fleet.close()
    return statistics.mean(r.e2e for r in results if r.e2e is not None)


def policy_config(args: argparse.Namespace) -> ScalingPolicyConfig:
    return ScalingPolicyConfig(
        target=TARGET_LOAD,
        tolerance=args.tolerance,
        ttft_slo_s=args.slo,
        min_replicas=1,
        max_replicas=20,
        scale_up_window_s=args.up_window,
        scale_down_window_s=args.down_window,
        max_scale_up_step=8,
        cooldown_s=args.cooldown,
    )


async def run_fleet(name: str, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    rate, duration, _ = SCENARIOS[scenario]
    times = arrivals(rate, duration, seed=args.seed)
    fleet = Fleet(speed=args.speed, startup=args.startup)
    fleet.t0 = time.monotonic()
    peak = max(oracle_count(rate, t, args.startup) for t in range(int(duration)))
    control: asyncio.Task | None = None
    stop = asyncio.Event()
    if name == "fixed":
        await fleet.scale(peak, warm=True)
    elif name == "oracle":
        await fleet.scale(oracle_count(rate, 0, args.startup), warm=True)

        async def drive() -> None:
            while not stop.is_set():
                n = oracle_count(rate, fleet.now(), args.startup)
                if n != fleet.desired:
                    await fleet.scale(n)
                await asyncio.sleep(1 / args.speed)

        control = asyncio.create_task(drive())
    else:
        await fleet.scale(1, warm=True)
        scaler = Autoscaler(
            "bench",
            fleet,
            TargetTracking(policy_config(args), stale_after_s=30),
            fleet,
            interval_s=args.interval / args.speed,
            clock=fleet.now,
        )
        control = asyncio.create_task(scaler.run(stop))
    results = [Result(t) for t in times]
    tasks = []
    bar = tqdm(total=len(times), desc=f"{scenario}/{name}", unit="req", leave=False, mininterval=5)
    for i, (t, r) in enumerate(zip(times, results, strict=True)):
        delay = fleet.t0 + t / args.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fleet.request(i, t, r))
        task.add_done_callback(lambda _: bar.update())
        tasks.append(task)
    await asyncio.gather(*tasks)
    bar.close()
    end = fleet.now()
    stop.set()
    if control is not None:
        await control
    failed = sum(not r.ok for r in results)
    ttfts = sorted(r.ttft for r in results if r.ttft is not None)
    good = sum(r.ok and r.ttft is not None and r.ttft <= args.slo for r in results)
    out = {
        "fleet": name,
        "requests": len(results),
        "failed": failed,
        "slo_attainment": good / len(results),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p99_s": ttfts[int(0.99 * (len(ttfts) - 1))] if ttfts else None,
        "replica_seconds": fleet.replica_seconds(end),
        "peak_replicas": max(len([r for r in fleet.reps if r.asked_at <= t and (r.stopped_at or end) > t]) for t in range(int(end))),
    }
    step_at = SCENARIOS[scenario][2]
    if step_at is not None:
        out["recovery_s"] = recovery(results, step_at, args.slo)
    await fleet.close()
    return out


def recovery(results: list[Result], step_at: float, slo: float, window: float = 2.0) -> float | None:
    """Seconds from the step until the p90 TTFT of each later 2 s arrival window stays under the SLO."""
    end = max(r.arrival for r in results)
    last_bad = step_at
    t = step_at
    while t < end:
        win = [r for r in results if t <= r.arrival < t + window]
        vals = sorted((r.ttft if r.ok and r.ttft is not None else math.inf) for r in win)
        if vals and vals[int(0.9 * (len(vals) - 1))] > slo:
            last_bad = t + window
        t += window
    return last_bad - step_at


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    global SERVICE_S
    SERVICE_S = await calibrate(args)
    report: dict[str, Any] = {
        "speed": args.speed,
        "startup_s": args.startup,
        "slo_s": args.slo,
        "service_s": SERVICE_S,
        "target_load": TARGET_LOAD,
        "scenarios": {},
    }
    for scenario in args.scenarios.split(","):
        rows = [await run_fleet(name, scenario, args) for name in args.fleets.split(",")]
        oracle = next(r for r in rows if r["fleet"] == "oracle")["replica_seconds"]
        for r in rows:
            r["vs_oracle"] = r["replica_seconds"] / oracle
        report["scenarios"][scenario] = rows
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"speed x{report['speed']:g}, replica start-up {report['startup_s']:g} s, TTFT SLO {report['slo_s']:g} s (trace seconds)")
    print(f"measured time in service {report['service_s']:.2f} s; target {report['target_load']:g} requests per replica (both)")
    for scenario, rows in report["scenarios"].items():
        print(f"\n{scenario}")
        print(
            f"{'fleet':<11}{'requests':>9}{'failed':>8}{'SLO ok':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
            f"{'replica-s':>11}{'vs oracle':>10}{'peak':>6}"
        )
        for r in rows:
            print(
                f"{r['fleet']:<11}{r['requests']:>9}{r['failed']:>8}{r['slo_attainment']:>8.2%} "
                f"{r['ttft_p50_s']:>9.2f}s{r['ttft_p99_s']:>9.2f}s"
                f"{r['replica_seconds']:>11.0f}{r['vs_oracle']:>9.2f}x{r['peak_replicas']:>6}"
            )
        auto = rows[0]
        if "recovery_s" in auto:
            limit = report["startup_s"] + 10
            ok = "within" if auto["recovery_s"] <= limit else "NOT within"
            print(f"10x step: TTFT back under the SLO {auto['recovery_s']:.0f} s after the step ({ok} start-up + 10 s = {limit:g} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", type=float, default=5.0, help="run this many times faster than the trace (default 5)")
    p.add_argument("--startup", type=float, default=20.0, help="replica start-up delay, trace seconds (default 20)")
    p.add_argument("--slo", type=float, default=2.0, help="TTFT SLO, seconds (default 2)")
    p.add_argument("--interval", type=float, default=2.0, help="autoscaler interval, trace seconds (default 2)")
    p.add_argument("--scenarios", default="bursty,step", help="comma-separated: bursty, step")
    p.add_argument("--up-window", type=float, default=0.0, help="autoscaler scale_up_window_s (default 0)")
    p.add_argument("--down-window", type=float, default=60.0, help="autoscaler scale_down_window_s (default 60)")
    p.add_argument("--cooldown", type=float, default=30.0, help="autoscaler cooldown_s (default 30)")
    p.add_argument("--tolerance", type=float, default=0.1, help="autoscaler tolerance (default 0.1)")
    p.add_argument(
        "--fleets",
        default="autoscaler,fixed,oracle",
        help="comma-separated fleets to run (the oracle is always needed for the ratio; 'fixed' may be left out to save time)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--verbose", action="store_true", help="log every autoscaler decision (JSON lines on stderr)")
    args = p.parse_args()
    fleets = args.fleets.split(",")
    if "oracle" not in fleets or not set(fleets) <= {"autoscaler", "fixed", "oracle"}:
        p.error("--fleets: a comma-separated subset of autoscaler, fixed, oracle that includes oracle")
    if args.verbose:
        from cluster.logs import setup_logging

        setup_logging("INFO")
    report = asyncio.run(main_async(args))
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
