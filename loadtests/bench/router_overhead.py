"""Router overhead: the same sim replicas driven directly and through the router.

    python -m loadtests.bench.router_overhead [--rates 250,500,1000] [--duration 10]

For each offered rate, two phases run back to back in one process, against
the same replica processes: **direct** (the client spreads requests round-robin
over the replicas' own gRPC `Replica/Generate`) and **router** (the client
calls the router's public `Inference/Generate`, round-robin policy).  Arrivals
are open-loop Poisson.  Printed per rate: TTFT p50/p99 of each phase, the
added TTFT (router - direct), achieved rate, and errors; then the highest rate
the router sustained (≥ 95 % of offered completed, no errors).

The sim replicas are set to a near-zero compute model (1 ms prefill, 1 ms
steps, 4 output tokens), so what is measured is transport and router work.
Client, router and replicas share this machine's cores: the client's own CPU
use inflates both phases alike, which is why the figure of merit is the
difference measured side by side, not either absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cluster.proto import inference_pb2, inference_pb2_grpc, replica_pb2, replica_pb2_grpc
from loadtests.procs import running, start_router, start_sim_replica

SIM = "{prefill_base_ms: 1, prefill_ms_per_token: 0, decode_base_ms: 1, decode_ms_per_seq: 0}"
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 4
CHANNELS = 4


@dataclass
class Phase:
    name: str
    rate: float
    ttft: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    wall_s: float = 0.0

    def pct(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        s = sorted(self.ttft)
        return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1000

    @property
    def achieved(self) -> float:
        return len(self.ttft) / self.wall_s if self.wall_s else 0.0


async def _drive(phase: Phase, send, duration_s: float, seed: int) -> None:
    rng = random.Random(seed)
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    next_at = start

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            first = None
            async for _ in send(i):
                if first is None:
                    first = time.perf_counter() - t0
            phase.ttft.append(first if first is not None else float("nan"))
        except grpc.aio.AioRpcError as exc:
            phase.errors[exc.code().name] = phase.errors.get(exc.code().name, 0) + 1

    i = 0
    while next_at - start < duration_s:
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = loop.create_task(one(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
        next_at += rng.expovariate(phase.rate)
    phase.sent = i
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    phase.wall_s = loop.time() - start


async def run_phase(name: str, rate: float, duration_s: float, replicas: list[str], router_port: int, seed: int) -> Phase:
    phase = Phase(name, rate)
    if name == "direct":
        chans = [grpc.aio.insecure_channel(a) for a in replicas for _ in range(max(1, CHANNELS // len(replicas)))]
        stubs = [replica_pb2_grpc.ReplicaStub(c) for c in chans]
        rr = itertools.cycle(range(len(stubs)))

        def send(i: int):
            req = replica_pb2.ReplicaGenerateRequest(request_id=f"d{rate}-{i}", prompt=f"hello {i}")
            req.sampling.max_tokens = MAX_TOKENS
            req.sampling.temperature = 1.0
            req.sampling.top_p = 1.0
            return stubs[next(rr)].Generate(req)
    else:
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") for _ in range(CHANNELS)]
        stubs = [inference_pb2_grpc.InferenceStub(c) for c in chans]

        def send(i: int):
            req = inference_pb2.GenerateRequest(model=MODEL, prompt=f"hello {i}")
            req.sampling.max_tokens = MAX_TOKENS
            return stubs[i % len(stubs)].Generate(req)

    # warm up connections
    await _drive(Phase(name, 50), send, 0.5, seed + 1)
    await _drive(phase, send, duration_s, seed)
    for c in chans:
        await c.close()
    return phase


def start_profiler(pid: int, seconds: float, out: str) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("--profile: py-spy is not installed (pip install py-spy); skipping the profile")
        return None
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw", "-o", out, "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: str, top: int = 12) -> dict:
    """Shares of the router's samples by where the innermost frame is, and the top frames by self time."""
    own: collections.Counter[str] = collections.Counter()
    where: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        own[frames[-1]] += int(n)
        leaf = frames[-1]
        if "grpc" in leaf:
            kind = "gRPC library, Python part"
        elif "asyncio" in leaf or "selectors" in leaf:
            # py-spy cannot see Cython frames: grpc.aio's Cython callbacks show as the loop's Handle._run.
            kind = "asyncio loop, incl. grpc.aio's Cython callbacks"
        elif "threading" in leaf:
            kind = "gRPC's completion-queue polling thread"
        else:
            kind = "router code and the stdlib it calls"
        where[kind] += int(n)
    print(f"\nrouter profile ({total} samples) -> {path}")
    for kind, n in where.most_common():
        print(f"  {100 * n / max(total, 1):5.1f}%  {kind}")
    print("  top frames by self time:")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / max(total, 1):5.1f}%  {frame[:110]}")
    return {"samples": total, "by_kind": {k: n / max(total, 1) for k, n in where.items()}}


async def main_async(args: argparse.Namespace) -> dict:
    rates = [float(r) for r in args.rates.split(",")]
    out: dict = {"rates": []}
    with running() as procs:
        replicas = [start_sim_replica(procs, SIM) for _ in range(args.replicas)]
        grpc_port, _ = start_router(procs, replicas)
        router_pid = procs.procs[-1].pid
        print(f"{args.replicas} sim replicas, router on :{grpc_port}; {args.duration:.0f} s per phase, {MAX_TOKENS} tokens per request\n")
        hdr = (
            f"{'rate':>6} | {'direct p50':>10} {'p99':>7} | {'router p50':>10} {'p99':>7} | "
            f"{'added p50':>9} {'p99':>7} | {'achieved':>8} | errors"
        )
        print(hdr + "\n" + "-" * len(hdr))
        sustained = 0.0
        for rate in rates:
            d = await run_phase("direct", rate, args.duration, replicas, grpc_port, 1)
            prof = start_profiler(router_pid, args.duration, args.profile) if args.profile and rate == max(rates) else None
            r = await run_phase("router", rate, args.duration, replicas, grpc_port, 1)
            if prof is not None:
                prof.wait(60)
            add50, add99 = r.pct(50) - d.pct(50), r.pct(99) - d.pct(99)
            errs = {**{f"direct:{k}": v for k, v in d.errors.items()}, **{f"router:{k}": v for k, v in r.errors.items()}}
            print(
                f"{rate:6.0f} | {d.pct(50):8.2f}ms {d.pct(99):5.2f}ms | {r.pct(50):8.2f}ms {r.pct(99):5.2f}ms | "
                f"{add50:7.2f}ms {add99:5.2f}ms | {r.achieved:8.1f} | {errs or '-'}"
            )
            if not r.errors and r.achieved >= 0.95 * rate:
                sustained = max(sustained, rate)
            out["rates"].append(
                {
                    "rate": rate,
                    "direct": {"ttft_p50_ms": d.pct(50), "ttft_p99_ms": d.pct(99), "achieved": d.achieved, "errors": d.errors},
                    "router": {"ttft_p50_ms": r.pct(50), "ttft_p99_ms": r.pct(99), "achieved": r.achieved, "errors": r.errors},
                    "added_ttft_p50_ms": add50,
                    "added_ttft_p99_ms": add99,
                    "mean_ttft_ratio": statistics.fmean(r.ttft) / statistics.fmean(d.ttft) if d.ttft and r.ttft else None,
                }
            )
        out["highest_sustained_rate"] = sustained
        print(f"\nhighest rate sustained through the router (>=95% completed, no errors): {sustained:.0f} req/s")
        print("targets: added TTFT <= 0.3 ms p50 and <= 2 ms p99 at 1,000 streaming req/s")
        if args.profile and os.path.exists(args.profile):  # noqa: ASYNC240 - once, after the run
            out["profile"] = summarize_profile(args.profile)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100,250,500,1000", help="offered rates, req/s, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--profile", metavar="FILE", help="py-spy the router during the highest rate; raw stacks to FILE")
    args = p.parse_args(argv)
    out = asyncio.run(main_async(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
