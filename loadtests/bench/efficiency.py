"""Serving efficiency: the whole cluster against `vllm serve` of the same model directory, side by side.

    python -m loadtests.bench.efficiency [--streams 8,32] [--requests 4] [--passes 1] [--input-tokens 64]
                                         [--max-tokens 64] [--rounds 2] [--keep DIR]

**vllm serve**: ``python -m vllm.entrypoints.openai.api_server --model DIR`` with vLLM's defaults but the KV
cache size (``VLLM_SERVE_FLAGS``; DIR: the prepared embedded SmolLM2-135M-Instruct).  **cluster**:
``llm-cluster up --detach`` with the default config (Ray head, controller, one replica actor hosting the
engine, the router) on the same directory.  Both are driven by the same client over the same OpenAI HTTP API:
for each ``--streams`` value, that many concurrent streams, each sending ``--requests`` completions in a row
(a prompt of ``--input-tokens`` tokens, greedy, ``ignore_eos``, ``--max-tokens`` out, streamed with usage);
printed: output tokens/s of each side and the ratio cluster / vllm serve (target >= 0.97), over all the
measured passes of all rounds (``--passes``: measured drives per ``--streams`` value after each start, each
printed; more passes average out the seconds-long stalls a shared machine puts into single drives).  One
warm-up request per stream comes first, unmeasured.

Start-up: from launch until the side answers (``vllm serve``: ``/v1/models``; cluster: ``up --detach``
returns, which waits for the replica).  Each side gets a compile cache of its own for the run
(``VLLM_CACHE_ROOT``), empty at round 1: round 1 is a first start, round 2 a second one.  Rounds alternate
the sides (ABBA: round 2 starts with the side round 1 ended with), so drift on a shared machine hits both
alike.  ``--keep DIR`` keeps ``vllm serve``'s log and both
compile caches there (the cluster's replica logs are in Ray's session directory, under ``$RAY_TMPDIR``): a
second start that loaded the cache logs vLLM's "Directly load the compiled graph(s)", one that did not
"Compiling a graph" again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from cluster.models.prepare import prepare_embedded
from loadtests.procs import free_port

MODEL = "smollm2-135m-instruct"
SIDES = ("vllm serve", "cluster")
#: The one flag added to `vllm serve`'s defaults: on CPU its default KV cache asks for 90 % of the machine's
#: RAM and refuses to start when other processes hold more than 10 % (a shared machine always does); 1 GiB
#: is what a cluster replica takes by default on CPU (``CPU_DEFAULT_KV_CACHE_BYTES``).
VLLM_SERVE_FLAGS = ["--kv-cache-memory-bytes", str(1 << 30)]


def prompts(path: str, n: int, tokens: int) -> list[str]:
    """``n`` different prompts of ``tokens`` tokens each (by the model's own tokenizer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    filler = " ".join(["the", "quiet", "river", "runs", "past", "old", "stone", "mills", "and", "green", "fields"] * 20)
    out = []
    for i in range(n):
        ids = tok.encode(f"Story {i}: {filler}", add_special_tokens=False)[:tokens]
        out.append(tok.decode(ids))
    return out


async def _one(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of one streamed completion."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage = None
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                usage = json.loads(line[6:]).get("usage") or usage
    if not usage:
        raise RuntimeError("the stream ended without usage")
    return usage["prompt_tokens"], usage["completion_tokens"]


async def drive(base_url: str, texts: list[str], streams: int, requests: int, max_tokens: int) -> tuple[float, float]:
    """Output tokens/s of ``streams`` closed-loop streams of ``requests`` each, and the mean prompt length."""
    url = f"{base_url}/v1/completions"
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(_one(session, url, texts[i], 8) for i in range(streams)))  # warm-up
        queue = list(texts[: streams * requests])
        counts: list[tuple[int, int]] = []

        async def stream() -> None:
            while queue:
                counts.append(await _one(session, url, queue.pop(), max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(streams)))
        seconds = time.perf_counter() - started
    return sum(c for _, c in counts) / seconds, statistics.fmean(p for p, _ in counts)


def _wait_http(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


class VllmServe:
    def __init__(self, path: str, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", MODEL]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), *VLLM_SERVE_FLAGS]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self) -> None:
        _wait_http(f"{self.url}/v1/models", self.proc, 900)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Cluster:
    def __init__(self, env: dict[str, str], log: Path, overrides: list[str]) -> None:
        self.env, self.log = env, log
        grpc_port, self.port = free_port(), free_port()
        self.args = ["up", "--detach", "--grpc-port", str(grpc_port), "--http-port", str(self.port)]
        for o in overrides:
            self.args += ["--set", o]
        self.url = f"http://127.0.0.1:{self.port}"

    def _cli(self, *args: str) -> None:
        with self.log.open("a") as out:
            r = subprocess.run([sys.executable, "-m", "cluster.cli", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError(f"llm-cluster {' '.join(args)} failed (see {self.log})")

    def wait(self) -> None:
        self._cli(*self.args)

    def stop(self) -> None:
        self._cli("down")


def run_side(side: str, args: argparse.Namespace, path: str, texts: list[str], tmp: Path) -> dict:
    env = os.environ | {"VLLM_CACHE_ROOT": str(tmp / side.replace(" ", "-") / "vllm-cache")}
    log = tmp / f"{side.replace(' ', '-')}.log"
    started = time.monotonic()
    server = VllmServe(path, env, log) if side == "vllm serve" else Cluster(env, log, args.set)
    try:
        server.wait()
        result: dict = {"start_s": time.monotonic() - started}
        for n in args.streams:
            result[n] = []
            for k in range(args.passes):
                tps, prompt = asyncio.run(drive(server.url, texts, n, args.requests, args.max_tokens))
                result[n].append(tps)
                print(f"  {side:10s} {n:3d} streams, pass {k + 1}: {tps:7.1f} output tokens/s (prompt {prompt:.0f} tokens)", flush=True)
    finally:
        server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="8,32", help="concurrent streams, comma-separated (default 8,32)")
    p.add_argument("--requests", type=int, default=4, help="requests per stream per measurement")
    p.add_argument("--passes", type=int, default=1, help="measured drives per --streams value after each start")
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="rounds; round 1 starts each side with an empty compile cache")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="config override for the cluster side")
    p.add_argument("--keep", metavar="DIR", help="keep the logs and compile caches in DIR (default: a temporary directory)")
    args = p.parse_args(argv)
    args.streams = [int(s) for s in args.streams.split(",")]
    path = str(prepare_embedded(MODEL))
    texts = prompts(path, max(args.streams) * args.requests, args.input_tokens)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="efficiency-") as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for rnd in range(1, args.rounds + 1):
            for side in SIDES if rnd % 2 else SIDES[::-1]:
                print(f"round {rnd}: {side}", flush=True)
                results[side].append(run_side(side, args, path, texts, Path(tmp)))
                print(f"  {side:10s} started in {results[side][-1]['start_s']:.1f} s", flush=True)
    print(
        f"\n{args.input_tokens} in / {args.max_tokens} out, greedy, ignore_eos, {args.requests} requests per stream, "
        f"{args.rounds} rounds of {args.passes} measured passes"
    )
    for n in args.streams:
        v = statistics.fmean(t for r in results["vllm serve"] for t in r[n])
        c = statistics.fmean(t for r in results["cluster"] for t in r[n])
        print(f"{n:3d} streams: vllm serve {v:7.1f}  cluster {c:7.1f} output tokens/s  ratio {c / v:.3f}  (target >= 0.97)")
    for side in SIDES:
        starts = ", ".join(f"{r['start_s']:.1f} s" for r in results[side])
        print(f"start-up {side:10s}: {starts}  (first start, then with the compile cache of the first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
