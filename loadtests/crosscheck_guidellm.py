"""Cross-check: the same workload through ``python -m loadtests`` and through guidellm, side by side.

    python loadtests/crosscheck_guidellm.py --start-sim 2            # starts 2 sim replicas + a router itself
    python loadtests/crosscheck_guidellm.py --target http://localhost:8000 --rate 5 --duration 30

Both tools drive the target one after the other with the same arrival process (evenly spaced at ``--rate``: Poisson draws would differ
between the tools' seeds and add sampling noise to the comparison), the
same prompt/output lengths and the same duration, over the OpenAI streaming API; the script prints both
tools' TTFT (mean, median), ITL mean, request and output-token throughput, and their ratio.  Agreement within
10% says our timing and arithmetic match an independent implementation; a larger gap points at one of them
(or at a noisy machine: run it twice).

guidellm is installed into its own venv (``loadtests/.venv-guidellm``, made on first use) because its pins
clash with the project's.  Its synthetic data needs a Hugging Face tokenizer: the embedded SmolLM2 model's,
prepared by ``llm-cluster models prepare``, is used by default.

Definitions differ slightly, and the table says so: guidellm's throughputs are over its own measurement
window, ours (as vLLM's) over the run from the first send to the last answer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-guidellm"
GUIDELLM_VERSION = "0.8.1"


def ensure_guidellm() -> Path:
    exe = VENV / "bin" / "guidellm"
    if not exe.exists():
        print(f"installing guidellm=={GUIDELLM_VERSION} into {VENV} (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"guidellm=={GUIDELLM_VERSION}"], check=True)
    return exe


def run_ours(target: str, rate: float, duration: float, input_len: int, output_len: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "loadtests", "run", "--target", target, "--rate", str(rate), "--duration", str(duration),
           "--arrival", "constant", "--input-len", str(input_len), "--output-len", str(output_len),
           "--out", str(out), "--no-plots", "--no-progress"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=HERE.parent, stdout=subprocess.DEVNULL)
    r = json.loads((out / "result.json").read_text())
    lat = r["latency_ms"]
    return {
        "requests completed": r["requests"]["completed"],
        "TTFT mean (ms)": lat["ttft"]["mean"],
        "TTFT median (ms)": lat["ttft"]["median"],
        "ITL mean (ms)": lat["itl"]["mean"],
        "request throughput (req/s)": r["throughput"]["requests_per_s"],
        "output throughput (tok/s)": r["throughput"]["output_tokens_per_s"],
    }


def run_guidellm(exe: Path, target: str, rate: float, duration: float, input_len: int, output_len: int, tokenizer: str, out: Path) -> dict:
    path = out / "guidellm.json"
    cmd = [str(exe), "run", "--backend", f"kind=openai_http,target={target}",
           "--profile", f"kind=constant,rate={rate}", "--constraint", f"kind=max_duration,seconds={duration}",
           "--data", f"kind=synthetic_text,prompt_tokens={input_len},output_tokens={output_len}",
           "--tokenizer", f"kind=huggingface_auto,model={tokenizer}", "--output", f"kind=json,path={path}",
           "--disable-console"]  # fmt: skip
    # guidellm starts up to 10 worker processes by default; on a small machine they compete with the target
    # for cores and inflate its latencies.  One process, like our client.
    env = os.environ | {"GUIDELLM__MAX_WORKER_PROCESSES": os.environ.get("GUIDELLM__MAX_WORKER_PROCESSES", "1")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    m = json.loads(path.read_text())["benchmarks"][0]["metrics"]
    ok = lambda name: m[name]["successful"]  # noqa: E731
    return {
        "requests completed": ok("time_to_first_token_ms")["count"],
        "TTFT mean (ms)": ok("time_to_first_token_ms")["mean"],
        "TTFT median (ms)": ok("time_to_first_token_ms")["median"],
        "ITL mean (ms)": ok("inter_token_latency_ms")["mean"],
        "request throughput (req/s)": ok("requests_per_second")["mean"],
        "output throughput (tok/s)": ok("output_tokens_per_second")["mean"],
    }


def start_sim(n: int) -> tuple[str, list[subprocess.Popen]]:
    sys.path.insert(0, str(HERE.parent))
    from loadtests.procs import free_port

    env = os.environ | {"LLM_CLUSTER_LOG_LEVEL": "WARNING"}
    exe = [sys.executable, "-m", "cluster.cli"]
    procs, replicas = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen([*exe, "replica", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port)], env=env))
        replicas += ["--replica", f"127.0.0.1:{port}"]
    http = free_port()
    router = [*exe, "router", "--engine", "sim", *replicas, "--grpc-port", str(free_port()), "--http-port", str(http)]
    procs.append(subprocess.Popen([*router, "--set", "router.host=127.0.0.1"], env=env, stderr=subprocess.DEVNULL))
    target = f"http://127.0.0.1:{http}"
    import urllib.request

    for _ in range(100):
        try:
            if json.loads(urllib.request.urlopen(f"{target}/healthz", timeout=1).read())["ready_replicas"] == n:
                return target, procs
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the sim cluster did not come up")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="OpenAI-compatible base URL (e.g. http://localhost:8000)")
    p.add_argument("--start-sim", type=int, metavar="N", help="start N sim replicas and a router as the target")
    p.add_argument("--rate", type=float, default=5.0, help="arrivals per second, evenly spaced (default 5)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per tool (default 30)")
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens (default 64)")
    p.add_argument("--output-len", type=int, default=32, help="output tokens (default 32)")
    p.add_argument("--tokenizer", help="HF tokenizer dir for guidellm (default: the prepared embedded SmolLM2)")
    args = p.parse_args()
    if bool(args.target) == bool(args.start_sim):
        p.error("give exactly one of --target or --start-sim")
    tokenizer = args.tokenizer
    if tokenizer is None:
        sys.path.insert(0, str(HERE.parent))
        from cluster.models.prepare import resolve_model_source

        tokenizer = str(resolve_model_source("embedded:smollm2-135m-instruct"))
    exe = ensure_guidellm()
    procs: list[subprocess.Popen] = []
    try:
        target = args.target
        if args.start_sim:
            target, procs = start_sim(args.start_sim)
        with tempfile.TemporaryDirectory() as tmp:
            shape = (args.rate, args.duration, args.input_len, args.output_len)
            ours = run_ours(target, *shape, Path(tmp) / "ours")
            theirs = run_guidellm(exe, target, *shape, tokenizer, Path(tmp))
    finally:
        for proc in procs:
            proc.terminate()
    print(f"target {target}: constant {args.rate:g} req/s for {args.duration:g} s, {args.input_len} in / {args.output_len} out tokens")
    print(f"{'metric':<30}{'loadtests':>12}{'guidellm':>12}{'ratio':>9}  within 10%")
    for key, a in ours.items():
        b = theirs[key]
        ratio = a / b if b else float("nan")
        print(f"{key:<30}{a:>12.2f}{b:>12.2f}{ratio:>9.3f}  {'yes' if abs(ratio - 1) <= 0.10 else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
