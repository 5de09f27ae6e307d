"""Soak: a long run at 70% load over sim replicas, reporting memory growth and leaked in-flight entries.

    python -m loadtests.soak --duration-s 1800            # the 30-minute run (target: < 5% growth, 0 leaks)
    python -m loadtests.soak --duration-s 60 --out soak.json

The router and each sim replica run in their own process (real gRPC between
them, the router's HTTP API in front), so each one's memory is measured alone.
A control pipe into every child reports its RSS and what it still holds:

- router: the gate's admission slots and waiters, tenant in-flight counts,
  the balancer's and the replica handles' in-flight counts (``Gate.leaks()``);
- replica: the servicer's in-flight request ids and the engine's running and
  waiting sequences.

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
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil

from loadtests.openloop import open_loop, percentile
from loadtests.workloads import RequestSpec


# ---- children -----------------------------------------------------------------
def _serve_control(conn: Connection, stats: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        if not conn.poll(0.2):
            continue
        try:
            cmd = conn.recv()
        except (EOFError, OSError):  # the parent is gone: stop too, leave no orphan
            stop.set()
            break
        if cmd == "stop":
            conn.send({"stopped": True})
            stop.set()
            break
        conn.send({"rss_bytes": psutil.Process().memory_info().rss, **stats()})


def replica_main(conn: Connection, replica_id: str, sim: dict[str, Any]) -> None:
    from cluster.engine.sim import SimEngine, SimParams
    from cluster.replica.server import ReplicaServicer, start_server

    async def main() -> None:
        engine = SimEngine(SimParams.from_dict(sim), model_name="sim")
        servicer = ReplicaServicer(engine, replica_id, "sim")
        server, port = await start_server(servicer, "127.0.0.1", 0)
        conn.send({"port": port, "max_model_len": engine.max_model_len})

        def stats() -> dict[str, Any]:
            load = engine.load()
            return {"in_flight": len(servicer.in_flight), "engine_running": load.running, "engine_waiting": load.waiting}

        stop = threading.Event()
        t = threading.Thread(target=_serve_control, args=(conn, stats, stop), daemon=True)
        t.start()
        while not stop.is_set():  # noqa: ASYNC110 - polled from a thread-set flag
            await asyncio.sleep(0.2)
        await server.stop(0.5)
        await engine.shutdown()

    asyncio.run(main())


def router_main(conn: Connection, endpoints: list[dict[str, str]], router_cfg: dict[str, Any]) -> None:
    from cluster.config import RouterConfig
    from cluster.router.app import Router
    from cluster.router.replicas import static_source

    async def main() -> None:
        router = Router(RouterConfig.model_validate(router_cfg), static_source({"sim": endpoints}))
        await router.start()
        conn.send({"http_port": router.http_port, "grpc_port": router.grpc_port})

        def stats() -> dict[str, Any]:
            return {"leaks": router.gate.leaks(), "admitted": router.gate.admitted, "refused": router.gate.refused}

        stop = threading.Event()
        t = threading.Thread(target=_serve_control, args=(conn, stats, stop), daemon=True)
        t.start()
        while not stop.is_set():  # noqa: ASYNC110 - polled from a thread-set flag
            await asyncio.sleep(0.2)
        await router.stop(0.5)

    asyncio.run(main())


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


class Child:
    def __init__(self, name: str, target: Any, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child_conn, *args), daemon=True, name=name)
        self.proc.start()
        self.lock = threading.Lock()

    def first(self, timeout: float = 60) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name} did not start within {timeout} s")
        return self.conn.recv()

    def ask(self, cmd: str = "stats") -> dict[str, Any]:
        with self.lock:
            self.conn.send(cmd)
            if not self.conn.poll(10):
                raise RuntimeError(f"{self.name} did not answer")
            return self.conn.recv()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def _spec(cfg: SoakConfig):
    return lambda i: RequestSpec(
        prompt=f"soak request {i}: " + "lorem ipsum " * (8 + i % 24), prompt_tokens=30, output_tokens=cfg.output_tokens
    )


async def run_soak(cfg: SoakConfig, progress: bool = True) -> dict[str, Any]:
    from loadtests.clients.openai_http import OpenAIHTTPClient

    sim = {"time_scale": cfg.time_scale, "seed": 0}
    replicas = [Child(f"replica-{i}", replica_main, f"r{i}", {**sim, "seed": i}) for i in range(cfg.replicas)]
    router: Child | None = None
    try:
        eps = []
        for i, r in enumerate(replicas):
            info = r.first()
            eps.append({"replica_id": f"r{i}", "address": f"127.0.0.1:{info['port']}", "max_model_len": str(info["max_model_len"])})
        router_cfg = {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "admission": {"max_concurrent_per_replica": cfg.slots_per_replica, "queue_timeout_s": 5.0},
        }
        router = Child("router", router_main, eps, router_cfg)
        port = router.first()["http_port"]
        children = [router, *replicas]
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
            base = {c.name: c.ask()["rss_bytes"] for c in children}
            timeline: list[dict[str, Any]] = []
            stop_sampling = asyncio.Event()

            async def sampler() -> None:
                from tqdm import tqdm

                t0 = time.monotonic()
                with tqdm(total=int(cfg.duration_s), unit="s", desc="soak", disable=not progress) as bar:
                    while not stop_sampling.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop_sampling.wait(), cfg.sample_every_s)
                        el = time.monotonic() - t0
                        bar.update(min(int(el), int(cfg.duration_s)) - bar.n)
                        stats = await asyncio.to_thread(lambda: {c.name: c.ask()["rss_bytes"] for c in children})
                        timeline.append({"t_s": round(el, 1), **{k: round(v / 2**20, 1) for k, v in stats.items()}})

            sampling = asyncio.create_task(sampler())
            results = await open_loop(client, "sim", rate=rate, duration_s=cfg.duration_s, spec=spec, timeout_s=60, seed=3)
            stop_sampling.set()
            await sampling
        finally:
            await client.close()
        await asyncio.sleep(1.0)  # let cancellations and channel closes settle
        final = {c.name: c.ask() for c in children}
    finally:
        if router is not None:
            router.stop()
        for r in replicas:
            r.stop()

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
    leaks: dict[str, Any] = {"router": final["router"]["leaks"]}
    for r in replicas:
        f = final[r.name]
        held = {k: f[k] for k in ("in_flight", "engine_running", "engine_waiting") if f[k]}
        if held:
            leaks[r.name] = held
    leaked = sum(sum(v.values()) for v in leaks.values())
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    report = {
        "duration_s": cfg.duration_s,
        "warmup_s": warmup,
        "replicas": cfg.replicas,
        "slots": slots,
        "service_s": round(service_s, 3),
        "offered_rps": round(rate, 2),
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
        "leaks": {k: v for k, v in leaks.items() if v},
        "leaked_entries": leaked,
        "timeline_mib": timeline,
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
