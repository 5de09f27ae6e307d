"""Router overhead, side by side: ours, ``vllm-router`` and ``smg`` over the same near-zero-cost backends.

    python -m loadtests.bench.router_overhead [--duration 6] [--streams 16] [--rounds 2] [--systems ...]

Backends: ``--replicas`` (2) processes of :mod:`loadtests.bench.null_backend`, each speaking ``replica.proto`` (our
router's gRPC hop) and OpenAI SSE (the gateways' HTTP hop), streaming one-token chunks at next to no cost, so what is
measured is the router. Systems: ``direct`` (the client spreads requests round robin over the backends' own HTTP: the
baseline), ``ours`` (`llm-cluster router`, HTTP front, round robin, tokens over the replicas' relay stream,
``router.workers`` at its default: this machine's cores), ``ours-1-worker`` (the same with one worker process),
``ours-python-pump`` (the same with its per-token relay in Python, ``router.relay_pump: python``, not the C one),
``ours-grpc`` (the same over the OpenAI RPC, ``router.replica_transport: grpc``), ``python-floor``
(:mod:`loadtests.bench.floor_router`: our router's I/O parts and none of its features, the floor under its per-request
cost in Python), ``vllm-router`` and ``smg`` (PyPI, ``pip install -e '.[bench]'``; HTTP to HTTP, round robin; skipped
with a note when missing). The backends pause ``--token-interval-ms`` (1) between tokens, as an engine's steps do, so
each token is its own network write for every system; 0 sends them back to back, where TCP coalesces them for the HTTP
gateways. Each system gets a closed loop of ``--streams`` concurrent OpenAI chat streams for ``--duration`` s with 16
output tokens, then with 256, in ``--rounds`` interleaved rounds.

Printed (loadtests/bench/overhead_report.py) per system, summed over rounds: CPU per 16-token and per 256-token
stream, from the router process tree's own ``/proc/PID/stat`` (utime + stime, all its threads and children), and from
the two the CPU per relayed token (the slope) and per request (the 16-token figure less 16 tokens' worth); requests/s
of the 16-token runs; TTFT p50/p99 of the 16-token runs and what the router adds to the direct baseline's; then the
per-token and per-request CPU cut into user time (the router's own code) and system time (the kernel's socket work,
which every router pays alike), and each system's CPU with no traffic at all (``--idle`` s, all systems in one window
before the rounds). The client shares this machine's cores with everything else, so req/s and TTFT are comparable
side by side only; the CPU figures are each router's own (``direct``'s: the backends' own, aiohttp writing
pre-encoded SSE from memory, what a Python HTTP server of these streams costs before it does anything else). Then
each system's ratio to ``vllm-router`` per figure, taken inside each round and shown as min / median / max over the
rounds: the measurement's own noise. ``--profile FILE``: py-spy our router during its last 256-token run
(``--profile-length 16``: its last 16-token run, where the per-request work shows). Target: ours <= vllm-router's
CPU per request and per token.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from loadtests.bench import overhead_workers as workers
from loadtests.bench.overhead_report import LENGTHS, Run, Runs, report
from loadtests.procs import Procs, free_port, running, start_router, wait_port

MODEL = "smollm2-135m-instruct"
SYSTEMS = ("direct", "ours", "ours-1-worker", "ours-python-pump", "ours-grpc", "python-floor", "vllm-router", "smg")
#: Our router's variants: the config each adds to ``--ours-set``.
OURS = {
    "ours": [],
    "ours-1-worker": ["router.workers=1"],
    "ours-python-pump": ["router.relay_pump=python"],
    "ours-grpc": ["router.replica_transport=grpc"],
}


def start_backend(procs: Procs, interval_ms: float) -> tuple[str, str, int]:
    cmd = [sys.executable, "-m", "loadtests.bench.null_backend", "--token-interval-ms", str(interval_ms)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    procs.procs.append(p)
    assert p.stdout is not None
    m = re.search(r"grpc (\S+) http (\S+)", p.stdout.readline())
    if not m:
        raise RuntimeError("null backend did not start")
    return m.group(1), m.group(2), p.pid


def find_binary(name: str) -> str | None:
    """On PATH, or beside this Python (an unactivated venv)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


def start_gateway(procs: Procs, kind: str, urls: list[str], policy: str = "round_robin") -> tuple[str, int]:
    """``vllm-router`` or ``smg`` (PyPI) over the backends' OpenAI HTTP ``urls``; returns (its URL, its pid)."""
    port, metrics_port = free_port(), free_port()
    binary = find_binary(kind) or kind
    head = [binary] if kind == "vllm-router" else [binary, "launch"]
    level = "warning" if kind == "vllm-router" else "warn"
    cmd = [*head, "--host", "127.0.0.1", "--port", str(port), "--policy", policy, "--prometheus-port", str(metrics_port)]
    cmd += ["--log-level", level, "--worker-urls", *urls]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.procs.append(p)
    wait_port(port)
    return f"http://127.0.0.1:{port}", p.pid


def start_floor(procs: Procs, grpc_addrs: list[str]) -> tuple[str, int]:
    """:mod:`loadtests.bench.floor_router` over the backends' relay streams; returns (its URL, its pid)."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.bench.floor_router", "--port", str(port), *grpc_addrs]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    procs.procs.append(p)
    wait_port(port)
    return f"http://127.0.0.1:{port}", p.pid


def tree_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and every live descendant."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[float, float]] = {}
    for p, fields in workers.processes():
        parents[p] = int(fields[1])
        times[p] = workers.cpu_seconds(fields)
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [c for c, par in parents.items() if par in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    picked = [times[p] for p in tree if p in times]
    return sum(u for u, _ in picked), sum(k for _, k in picked)


async def closed_loop(urls: list[str], streams: int, max_tokens: int, duration_s: float, run: Run) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    end = time.perf_counter() + duration_s
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one_stream(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                url = urls[i % len(urls)]
                i += streams
                t0 = time.perf_counter()
                first = None
                n = 0
                try:
                    async with s.post(f"{url}/v1/chat/completions", data=data, headers=headers) as r:
                        if r.status != 200:
                            run.errors += 1
                            continue
                        async for line in r.content:
                            if line.startswith(b"data: {") and b'"content"' in line:
                                n += 1
                                if first is None:
                                    first = time.perf_counter() - t0
                except aiohttp.ClientError:
                    run.errors += 1
                    continue
                run.requests += 1
                run.tokens += n
                if first is not None:
                    run.ttft.append(first)

        await asyncio.gather(*(one_stream(k) for k in range(streams)))


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
    # py-spy samples a thread that is runnable, not only one on a CPU: a loopback send that wakes its peer, which
    # then preempts the sender on a small machine, reads as that line's self time (the relay request's write did).
    print("  top frames by self time (wall time of a runnable thread; the CPU figures above are /proc's):")
    for frame, n in own.most_common(top):
        print(f"  {100 * n / max(total, 1):5.1f}%  {frame[:110]}")
    return {"samples": total, "by_kind": {k: n / max(total, 1) for k, n in where.items()}}


async def measure(
    urls: list[str], pids: list[int], streams: int, max_tokens: int, duration_s: float, run: Run, by_worker: workers.Workers | None = None
) -> None:
    """One closed-loop run, its CPU from the router's process tree; ``by_worker``: each of our workers' share too."""
    await closed_loop(urls, streams, 4, 0.5, Run())  # warm connections
    w0 = await asyncio.to_thread(by_worker.sample) if by_worker is not None else None
    c0 = [tree_cpu(p) for p in pids]
    t0 = time.perf_counter()
    await closed_loop(urls, streams, max_tokens, duration_s, run)
    wall = time.perf_counter() - t0
    run.wall_s += wall
    c1 = [tree_cpu(p) for p in pids]
    if by_worker is not None and w0 is not None:
        by_worker.add(w0, await asyncio.to_thread(by_worker.sample), wall)
    run.cpu_s += sum(u + k for u, k in c1) - sum(u + k for u, k in c0)
    run.sys_s += sum(k for _, k in c1) - sum(k for _, k in c0)


async def main_async(args: argparse.Namespace) -> dict:
    systems = [s for s in args.systems.split(",") if s]
    runs: Runs = {(s, n): Run() for s in systems for n in LENGTHS}
    rounds: list[Runs] = []
    metrics_ports: dict[str, tuple[int, int]] = {}  # our systems: (the router's pid, its metrics port)
    notes: dict[str, str] = {}
    with running() as procs:
        backends = [start_backend(procs, args.token_interval_ms) for _ in range(args.replicas)]
        grpc_addrs, http_urls = [g for g, _, _ in backends], [h for _, h, _ in backends]
        # direct's CPU: the backends' own (aiohttp writing pre-encoded SSE): what Python's HTTP alone costs.
        fronts: dict[str, tuple[list[str], list[int]]] = {"direct": (http_urls, [p for _, _, p in backends])}
        for s in systems:
            if s in OURS:
                metrics_port = free_port()
                overrides = [*args.ours_set, *OURS[s], f"router.metrics_port={metrics_port}"]
                _, http_port = start_router(procs, grpc_addrs, policy="round_robin", overrides=overrides)
                fronts[s] = ([f"http://127.0.0.1:{http_port}"], [procs.procs[-1].pid])
                metrics_ports[s] = (procs.procs[-1].pid, metrics_port)
            elif s in ("vllm-router", "smg"):
                if find_binary(s) is None:
                    notes[s] = f"skipped: {s} not installed (pip install -e '.[bench]')"
                    continue
                url, pid = start_gateway(procs, s, http_urls)
                fronts[s] = ([url], [pid] if pid else [])
            elif s == "python-floor":
                url, pid = start_floor(procs, grpc_addrs)
                fronts[s] = ([url], [pid])
        await asyncio.sleep(2.0)  # gateways probe their workers before they route
        by_worker: dict[str, workers.Workers] = {}
        for s, (router, port) in metrics_ports.items():
            pids = await asyncio.to_thread(workers.worker_pids, router, port) or [router]  # none: one worker, itself
            by_worker[s] = workers.Workers(pids, port)
        idle = await idle_cpu(fronts, args.idle)
        for rnd in range(args.rounds):
            rounds.append({})
            for s in systems:
                if s not in fronts:
                    continue
                urls, pids = fronts[s]
                for n in LENGTHS:
                    last = rnd == args.rounds - 1 and n == args.profile_length
                    profiled = args.profile and s == "ours" and last and pids
                    prof = start_profiler(pids[0], args.duration, args.profile) if profiled else None
                    print(f"... round {rnd + 1}: {s}, {n} tokens", file=sys.stderr, flush=True)
                    one = rounds[-1][(s, n)] = Run()
                    await measure(urls, pids, args.streams, n, args.duration, one, by_worker.get(s) if n == LENGTHS[0] else None)
                    runs[(s, n)].add(one)
                    if prof is not None:
                        prof.wait(60)
    out = report(systems, runs, rounds, notes, args, idle)
    out["by_worker"] = workers.report(by_worker)
    return out


async def idle_cpu(fronts: dict[str, tuple[list[str], list[int]]], seconds: float) -> dict[str, float]:
    """Each system's CPU ms per second with no traffic (load streams, health checks, timers), all in one window:
    a part of the per-request figure that is not per request at all (it is paid per second)."""
    before = {s: [tree_cpu(p) for p in pids] for s, (_, pids) in fronts.items()}
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - t0
    after = {s: [tree_cpu(p) for p in pids] for s, (_, pids) in fronts.items()}
    return {s: (sum(u + k for u, k in after[s]) - sum(u + k for u, k in before[s])) / wall * 1e3 for s in fronts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from " + ",".join(SYSTEMS))
    p.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    p.add_argument("--streams", type=int, default=16, help="concurrent streams (closed loop)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--token-interval-ms", type=float, default=1.0, help="backend pause between tokens (0: back to back, coalesced by TCP)")
    p.add_argument("--ours-set", action="append", default=[], metavar="PATH=VALUE", help="config override for our router")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of no traffic in which each system's idle CPU is read")
    p.add_argument("--profile", metavar="FILE", help="py-spy our router during its last 256-token run; raw stacks to FILE")
    p.add_argument("--profile-length", type=int, choices=LENGTHS, default=LENGTHS[-1], help="profile the runs of this many tokens")
    args = p.parse_args(argv)
    if "direct" not in args.systems.split(","):
        args.systems = "direct," + args.systems
    out = asyncio.run(main_async(args))
    if args.profile and os.path.exists(args.profile):
        out["profile"] = summarize_profile(args.profile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
