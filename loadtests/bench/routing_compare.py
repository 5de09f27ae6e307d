"""Routing comparison: one shared-prefix multi-turn workload, the same sim replicas, every router.

    python -m loadtests.bench.routing_compare [--duration 20] [--rate 12] [--systems ...]

For each system, 4 fresh sim replica processes are started (``llm-cluster
replica --engine sim --http-port 0``: gRPC for our router, their own OpenAI
HTTP API for the foreign gateways), then the router under test, then the
same open-loop Poisson schedule of the ``shared-prefix`` workload (the load
generator's, see loadtests/workloads.py) is sent through it over the OpenAI
HTTP API, streaming.  Fresh replicas per system, so no system inherits a
warm cache.  Printed per system: TTFT p50/p99, throughput (completed
requests/s and output tokens/s), errors, and the prefix-cache hit rate
(prompt tokens found in cache / prompt tokens looked up) summed over the
replicas' own counters, and the busiest replica's share of the prompt tokens
(``max rep``; 25% with 4 replicas is an even spread).  ``--group-popularity
zipf:S`` skews the sessions toward a few system prompts (real traffic: a few
products carry most requests), where piling a hot prefix onto one replica costs
queueing; ``--time-scale 1`` (unscaled sim times) makes a replica's prefill
time, and so its queue, matter at a rate this machine can drive.

Systems: ours with each policy (``ours:round_robin``, ``ours:prefix_aware``,
...), ``vllm-router:round_robin|cache_aware`` and ``smg:round_robin|cache_aware``
(PyPI ``vllm-router`` and ``smg``: ``pip install -e '.[bench]'``; a system
whose binary is missing is skipped with a note).

``--routers K`` starts K of our router processes over the same replicas (as K
router pods behind a Service) and spreads the requests over them: round robin
per request (a plain Service), or with ``--sticky`` a session's turns to one
router.  Our replicas publish what their prefix caches hold on the load
stream, so every router routes on the same picture; ``--ours-set
router.policy_options.prefix_aware.block_chars=129`` (a block size the
replicas do not publish) shows the routers' own optimistic index alone.

The replicas' KV cache is set small on purpose (``--kv-blocks``, default 1,536
blocks = 24k tokens each) against a working set of ``--groups`` system
prompts that does not fit one replica but fits the four together: the
situation where routing decides whether 4 replicas cache like one or like
four.  Sim times are scaled by ``--time-scale`` (default 0.2) to keep the run
short; TTFT figures are in scaled time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass

import aiohttp

from loadtests.arrivals import ArrivalProcess, RateProfile
from loadtests.bench.router_overhead import find_binary, start_gateway
from loadtests.clients import OpenAIHTTPClient
from loadtests.clients.spread import SpreadClient
from loadtests.lengths import LengthDist
from loadtests.metrics import aggregate, latency_samples, percentile
from loadtests.procs import Procs, running, start_router
from loadtests.runner import Runner, RunOptions, build_schedule
from loadtests.workloads import SharedPrefixWorkload, parse_group_popularity

MODEL = "smollm2-135m-instruct"
OURS = ("round_robin", "power_of_two", "least_kv", "session_affinity", "prefix_aware", "weighted")
FOREIGN = ("vllm-router:round_robin", "vllm-router:cache_aware", "smg:round_robin", "smg:cache_aware")


@dataclass
class Row:
    system: str
    ttft_p50_ms: float = float("nan")
    ttft_p99_ms: float = float("nan")
    ttft_mean_ms: float = float("nan")
    req_s: float = 0.0
    out_tok_s: float = 0.0
    hit_rate: float = float("nan")
    max_share: float = float("nan")  # the busiest replica's share of the prompt tokens (1/replicas = even)
    completed: int = 0
    errors: int = 0
    note: str = ""


def start_http_replica(procs: Procs, engine_args: str) -> tuple[str, str]:
    p = procs.spawn(["replica", "--engine", "sim", "--set", f"models.0.engine_args={engine_args}", "--port", "0", "--http-port", "0"])
    assert p.stdout is not None
    line = p.stdout.readline()
    m = re.search(r"on ([\d.]+):(\d+) http (http://[\d.]+:\d+)", line)
    if not m:
        raise RuntimeError(f"replica did not start: {line!r}")
    return f"{m.group(1)}:{m.group(2)}", m.group(3)


def start_foreign(procs: Procs, kind: str, policy: str, urls: list[str]) -> str:
    return start_gateway(procs, kind, urls, policy)[0]


async def _wait_serving(url: str, timeout_s: float = 60) -> None:
    """Until one real request goes through (gateways accept connections before their workers are up)."""
    deadline = time.monotonic() + timeout_s
    body = {"model": MODEL, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 1}
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.post(f"{url}/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} does not serve")
            await asyncio.sleep(0.5)


async def _cache_counters(http_urls: list[str]) -> list[tuple[int, int]]:
    """(prompt tokens looked up, tokens found cached) per replica, from the replicas' own counters."""
    out = []
    async with aiohttp.ClientSession() as s:
        for u in http_urls:
            async with s.get(f"{u}/get_server_info") as r:
                info = await r.json()
            out.append((info["prefix_cache_queries"], info["prefix_cache_hits"]))
    return out


async def run_system(system: str, args: argparse.Namespace) -> Row:
    kind, _, policy = system.partition(":")
    row = Row(system)
    if kind != "ours" and find_binary(kind) is None:
        row.note = f"skipped: {kind} not installed (pip install -e '.[bench]')"
        return row
    engine_args = (
        f"{{time_scale: {args.time_scale}, kv_capacity_blocks: {args.kv_blocks}, max_model_len: 4096, seed: 0, "
        f"max_num_batched_tokens: 8192}}"
    )
    with running() as procs:
        reps = [start_http_replica(procs, engine_args) for _ in range(args.replicas)]
        grpc_addrs, http_urls = [g for g, _ in reps], [h for _, h in reps]
        if kind == "ours":
            urls = [
                f"http://127.0.0.1:{start_router(procs, grpc_addrs, policy=policy, overrides=args.ours_set)[1]}"
                for _ in range(args.routers)
            ]
        else:
            urls = [start_foreign(procs, kind, policy, http_urls) for _ in range(args.routers)]
        for url in urls:
            await _wait_serving(url)
        c0 = await _cache_counters(http_urls)
        workload = SharedPrefixWorkload(
            seed=args.seed,
            groups=args.groups,
            system_prompt_len=args.system_prompt_len,
            turns=args.turns,
            active_sessions=args.sessions,
            zipf_s=args.group_popularity,
            input_len=LengthDist("fixed", 48),
            output_len=LengthDist("fixed", args.output_len),
        )
        arrivals = ArrivalProcess(RateProfile.constant(args.rate))
        schedule = build_schedule(workload, arrivals, seed=args.seed, duration_s=args.duration, num_requests=None)
        client = SpreadClient([OpenAIHTTPClient(u, api="chat") for u in urls], sticky=args.sticky)
        out = await Runner(client, RunOptions(model=MODEL, progress=False, request_timeout_s=120)).run(schedule)
        c1 = await _cache_counters(http_urls)
    agg = aggregate(out.results, out.duration_s)
    ttft = latency_samples(out.results)["ttft"]
    row.ttft_p50_ms = percentile(ttft, 50) * 1000 if ttft else float("nan")
    row.ttft_p99_ms = percentile(ttft, 99) * 1000 if ttft else float("nan")
    row.ttft_mean_ms = sum(ttft) / len(ttft) * 1000 if ttft else float("nan")
    row.req_s, row.out_tok_s = agg.request_throughput, agg.output_throughput
    row.completed, row.errors = agg.completed, agg.failed + agg.dropped
    queries = [q1 - q0 for (q0, _), (q1, _) in zip(c0, c1, strict=True)]
    hits = sum(h1 - h0 for (_, h0), (_, h1) in zip(c0, c1, strict=True))
    row.hit_rate = hits / sum(queries) if sum(queries) else float("nan")
    row.max_share = max(queries) / sum(queries) if sum(queries) else float("nan")
    return row


def _print(rows: list[Row]) -> None:
    hdr = f"{'system':<28} {'TTFT p50':>10} {'TTFT p99':>10} {'mean':>8} {'req/s':>7} {'out tok/s':>10} {'cache hit':>9} {'max rep':>7}"
    hdr += f" {'done':>5} {'err':>4}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        if r.note:
            print(f"{r.system:<28} {r.note}")
            continue
        print(
            f"{r.system:<28} {r.ttft_p50_ms:8.1f}ms {r.ttft_p99_ms:8.1f}ms {r.ttft_mean_ms:6.0f}ms {r.req_s:7.2f} {r.out_tok_s:10.1f} "
            f"{r.hit_rate:9.1%} {r.max_share:7.1%} {r.completed:5d} {r.errors:4d}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join([f"ours:{x}" for x in OURS] + list(FOREIGN)), help="comma-separated systems")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--rate", type=float, default=10.0, help="offered requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per system")
    p.add_argument("--groups", type=int, default=40, help="distinct system prompts")
    p.add_argument("--system-prompt-len", type=int, default=1200, help="tokens per system prompt")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--sessions", type=int, default=49, help="sessions active at once")
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument(
        "--group-popularity",
        type=parse_group_popularity,
        default=0.0,
        metavar="uniform|zipf:S",
        help="how sessions pick a system prompt: uniform (default) or zipf:S (a few groups carry most sessions)",
    )
    p.add_argument("--kv-blocks", type=int, default=1536, help="KV blocks (16 tokens) per sim replica")
    p.add_argument("--time-scale", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-set", action="append", default=[], metavar="PATH=VALUE", help="config override for our router, repeatable")
    p.add_argument("--routers", type=int, default=1, help="router processes per system over the same replicas")
    p.add_argument("--sticky", action="store_true", help="with --routers: a session's turns go to one router (else round robin)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    popularity = f"zipf:{args.group_popularity:g}" if args.group_popularity else "uniform"
    systems = [s if ":" in s else f"ours:{s}" for s in args.systems.split(",") if s]
    print(
        f"{args.replicas} sim replicas ({args.kv_blocks * 16} KV tokens each, time scale {args.time_scale}); shared-prefix: "
        f"{args.groups} groups x {args.system_prompt_len}-token system prompt, {args.turns} turns, {args.sessions} sessions, "
        f"group popularity {popularity}; Poisson {args.rate:g} req/s for {args.duration:g}s; "
        f"{args.routers} router(s) per system{', sticky by session' if args.sticky else ''}\n",
        flush=True,
    )
    rows = []
    for s in systems:
        print(f"... {s}", file=sys.stderr, flush=True)
        rows.append(asyncio.run(run_system(s, args)))
    _print(rows)
    by = {r.system: r for r in rows}
    rr, pa = by.get("ours:round_robin"), by.get("ours:prefix_aware")
    if rr and pa and not rr.note and not pa.note:
        print(f"\nprefix_aware / round_robin TTFT p50: {pa.ttft_p50_ms / rr.ttft_p50_ms:.2f}x (target <= 0.5x)")
        for f in ("vllm-router:cache_aware", "smg:cache_aware"):
            if f in by and not by[f].note:
                o = by[f]
                ttft = f"TTFT p50 {pa.ttft_p50_ms:.1f} vs {o.ttft_p50_ms:.1f} ms"
                print(f"prefix_aware vs {f}: {ttft}, cache hit {pa.hit_rate:.1%} vs {o.hit_rate:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
