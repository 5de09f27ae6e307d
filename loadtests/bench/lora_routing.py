"""LoRA-aware routing vs round robin: TTFT and adapter swaps, 8 adapters over sim replicas with max_loras 2.

    python -m loadtests.bench.lora_routing [--replicas 2,4] [--adapters 8] [--rate 12] [--requests 600]

Each replica is a real sim engine (``cluster.engine.sim``) with LoRA on: every
adapter is loaded, at most ``--max-loras`` run in one batch, a request whose
adapter has no active slot waits for one, and putting an adapter into a slot
costs ``lora_load_ms`` (plus ``lora_disk_load_ms`` when it is not among the
``max_cpu_loras`` cached).  The policy under test sees the replicas only
through the read-only view (``ReplicaView``), with load reports (running,
waiting, KV usage, active adapters) refreshed from the engines every 100 ms,
as the router's load stream does; no gRPC and no router, so what differs
between the runs is the routing decision alone.

Requests arrive as a Poisson process at ``--rate`` per second (wall time;
the engines run at ``--time-scale``), each for one adapter drawn uniformly
(or Zipf with ``--zipf S``), with a per-adapter system prompt and a unique
user turn.  Printed per (policy, replicas): TTFT p50/p99 (seconds of engine
time, i.e. divided by the time scale), adapter swaps in total and per 100
requests, and the routing outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

from cluster.config import PolicyOptions
from cluster.engine.base import EngineRequest, Sampling
from cluster.engine.sim import SimEngine, SimParams
from cluster.engine.sim.adapters import AdapterLimits
from cluster.router.policies import RouteRequest, make_policy
from cluster.router.policies.base import ModelLoad
from loadtests.bench.routing_scale import BenchReplica, pct

SYSTEM = " ".join(f"rule{i}" for i in range(60))


@dataclass(slots=True)
class Report:
    """The load report fields the policies read (replica.proto's LoadReport, plus the active adapters)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    kv_capacity_tokens: int = 0
    active_adapters: tuple[str, ...] = ()


async def report_loop(reps: list[BenchReplica], engines: dict[str, SimEngine], stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = time.monotonic()
        for r in reps:
            snap = engines[r.replica_id].load()
            r.load = Report(snap.running, snap.waiting, snap.kv_cache_usage, engines[r.replica_id].kv_capacity_tokens, snap.active_adapters)  # type: ignore[assignment]
            r.load_at = now
        await asyncio.sleep(0.1)


async def run(policy_name: str, n_replicas: int, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    adapters = [f"team-{i}" for i in range(args.adapters)]
    params = {"time_scale": args.time_scale, "seed": 0, "lora_load_ms": args.lora_load_ms, "lora_disk_load_ms": args.lora_disk_load_ms}
    limits = AdapterLimits(max_loras=args.max_loras, max_cpu_loras=args.max_cpu_loras)
    group = ModelLoad(size=n_replicas)
    reps = [BenchReplica(replica_id=f"r{i}", model="base", group=group) for i in range(n_replicas)]
    engines = {r.replica_id: SimEngine(SimParams.from_dict(params), model_name="base", lora=limits) for r in reps}
    for eng in engines.values():
        for a in adapters:
            await eng.load_adapter(a, f"sim://{a}")
    policy = make_policy(policy_name, PolicyOptions(), random.Random(args.seed))
    weights = [1 / (i + 1) ** args.zipf for i in range(len(adapters))] if args.zipf else None
    stop = asyncio.Event()
    reporter = asyncio.create_task(report_loop(reps, engines, stop))
    ttfts: list[float] = []
    outcomes: Counter[str] = Counter()

    async def one(k: int) -> None:
        adapter = rng.choices(adapters, weights=weights)[0]
        prompt = f"{adapter} {SYSTEM} user {k} asks something"
        req = RouteRequest(model="base", request_id=str(k), prompt=prompt, adapter=adapter)
        h = policy.choose(reps, req)  # type: ignore[arg-type]
        outcomes[req.outcome] += 1
        rep = next(r for r in reps if r.replica_id == h.replica_id)
        rep.add_requests(1)
        t0 = time.monotonic()
        first = True
        try:
            sampling = Sampling(max_tokens=args.max_tokens, temperature=1.0)
            ereq = EngineRequest(request_id=str(k), sampling=sampling, prompt=prompt, lora=adapter)
            async for _ in engines[rep.replica_id].generate(ereq):
                if first:
                    ttfts.append((time.monotonic() - t0) / args.time_scale)
                    first = False
        finally:
            rep.add_requests(-1)

    tasks = []
    for k in range(args.requests):
        tasks.append(asyncio.create_task(one(k)))
        await asyncio.sleep(rng.expovariate(args.rate))
    await asyncio.gather(*tasks)
    stop.set()
    await reporter
    swaps = sum(e.load().adapter_swaps for e in engines.values())
    disk = sum(e.adapters.disk_loads for e in engines.values() if e.adapters is not None)
    for e in engines.values():
        await e.shutdown()
    return {
        "policy": policy_name,
        "replicas": n_replicas,
        "ttft_p50_s": pct([int(t * 1e6) for t in ttfts], 50) / 1000,
        "ttft_p99_s": pct([int(t * 1e6) for t in ttfts], 99) / 1000,
        "swaps": swaps,
        "swaps_per_100": round(100 * swaps / args.requests, 1),
        "disk_loads": disk,
        "outcomes": dict(outcomes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="lora_aware,round_robin")
    p.add_argument("--replicas", default="2,4")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--max-loras", type=int, default=2)
    p.add_argument("--max-cpu-loras", type=int, default=None, help="adapters cached in host memory (default: max_loras)")
    p.add_argument("--rate", type=float, default=12.0, help="requests per second (wall time)")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--zipf", type=float, default=0.0, help="adapter popularity exponent (0: uniform)")
    p.add_argument("--lora-load-ms", type=float, default=5.0)
    p.add_argument("--lora-disk-load-ms", type=float, default=50.0)
    p.add_argument("--time-scale", type=float, default=0.25, help="engine time x this = wall time")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"{'policy':<12} {'replicas':>8} {'ttft_p50_s':>10} {'ttft_p99_s':>10} {'swaps':>6} {'per_100':>7} {'disk':>5}  outcomes")
    for n in (int(x) for x in args.replicas.split(",")):
        for name in args.policies.split(","):
            r = asyncio.run(run(name, n, args))
            print(
                f"{r['policy']:<12} {r['replicas']:>8} {r['ttft_p50_s']:>10.3f} {r['ttft_p99_s']:>10.3f} "
                f"{r['swaps']:>6} {r['swaps_per_100']:>7} {r['disk_loads']:>5}  {r['outcomes']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
