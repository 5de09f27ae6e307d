"""Routing decision cost at scale: decision time and index memory vs replicas and distinct prefixes.

    python -m loadtests.bench.routing_scale [--replicas 10,100,1000] [--prefixes 100,10000,100000]

One router's policy object over replicas it sees only through its read-only
view (``cluster.router.policies.base.ReplicaView``; no gRPC, no router: this
measures the policy, the per-request hot path), with ``--streams`` (default 10,000)
requests in flight throughout: each decision is followed by the start of its
request on the chosen replica and the end of a random in-flight one, so the
in-flight counts, the bounded-load cap and the index all evolve as in a busy
router.  Prompts are a ~2,000-character system prompt drawn from
``--prefixes`` distinct ones (Zipf-like popularity) plus a unique user turn.
Load reports arrive every 100 ms (refreshed between decisions, not timed).

Printed per (policy, replicas, prefixes): decision time p50/p99/max in
microseconds (``time.perf_counter_ns`` around ``choose`` only: wall time,
which on a shared machine includes preemption by other processes) and the
same in CPU time of this thread (``time.thread_time_ns``: the policy's own
cost), index entries, and the process's resident memory.  Target: p99 <= 100 us at 1,000 replicas,
under 1 GiB.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import time
from dataclasses import dataclass

from cluster.config import PolicyOptions
from cluster.proto import replica_pb2
from cluster.router.policies import ReplicaView, RouteRequest, make_policy
from cluster.router.policies.base import STALE_AFTER_S, ModelLoad

BASE = " ".join(f"word{i % 97}" for i in range(400))  # ~2,600 characters


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


@dataclass(eq=False)
class BenchReplica:
    """A replica as a policy sees it (``ReplicaView``), plus the start/end of requests the benchmark drives."""

    replica_id: str
    model: str
    group: ModelLoad
    in_flight: int = 0
    load: replica_pb2.LoadReport | None = None
    load_at: float = 0.0
    removed: bool = False
    routable: bool = True

    @property
    def load_stale(self) -> bool:
        return time.monotonic() - self.load_at > STALE_AFTER_S

    def add_requests(self, n: int) -> None:
        """``n`` requests start (n > 0) or end (n < 0) on this replica."""
        self.in_flight += n
        self.group.in_flight += n


def fleet(n: int) -> list[BenchReplica]:
    group = ModelLoad(size=n)
    reps = []
    for i in range(n):
        h = BenchReplica(replica_id=f"r{i}", model="m", group=group)
        h.load = replica_pb2.LoadReport(replica_id=h.replica_id, kv_capacity_tokens=186_400, kv_cache_usage=random.random() * 0.5)
        h.load_at = time.monotonic()
        reps.append(h)
    return reps


def _as_views(reps: list[BenchReplica]) -> list[ReplicaView]:
    return reps  # type: ignore[return-value]  # BenchReplica satisfies the Protocol


def pct(xs: list[int], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] / 1000


def run(policy_name: str, n_replicas: int, n_prefixes: int, streams: int, decisions: int, seed: int) -> dict:
    rng = random.Random(seed)
    reps = fleet(n_replicas)
    views = _as_views(reps)
    by_id = {r.replica_id: r for r in reps}  # the policy answers with a view; the benchmark drives the replica
    policy = make_policy(policy_name, PolicyOptions())
    in_flight: list[BenchReplica] = []
    times: list[int] = []
    cpu: list[int] = []
    last_report = time.monotonic()
    total = streams + decisions
    # Zipf-like popularity over prefixes: a few hot, a long tail.
    weights = [1 / (i + 1) ** 0.8 for i in range(n_prefixes)]
    picks = rng.choices(range(n_prefixes), weights=weights, k=total)
    gc.disable()
    for k in range(total):
        prompt = f"system {picks[k]}: {BASE} user {k}"
        req = RouteRequest(model="m", request_id=str(k), prompt=prompt, session_id=f"s{picks[k]}-{k % 7}")
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        chosen = policy.choose(views, req)
        dt = time.perf_counter_ns() - t0
        dc = time.thread_time_ns() - c0
        h = by_id[chosen.replica_id]
        h.add_requests(1)
        in_flight.append(h)
        if len(in_flight) > streams:
            i = rng.randrange(len(in_flight))
            in_flight[i], in_flight[-1] = in_flight[-1], in_flight[i]
            in_flight.pop().add_requests(-1)
        if k >= streams:
            times.append(dt)
            cpu.append(dc)
        now = time.monotonic()
        if now - last_report > 0.1:
            gc.enable()
            for r in reps:
                r.load_at = now
            last_report = now
            gc.disable()
    gc.enable()
    index = getattr(policy, "index", None)
    return {
        "policy": policy_name,
        "replicas": n_replicas,
        "prefixes": n_prefixes,
        "p50_us": pct(times, 50),
        "p99_us": pct(times, 99),
        "max_us": max(times) / 1000,
        "cpu_p50_us": pct(cpu, 50),
        "cpu_p99_us": pct(cpu, 99),
        "index_entries": index.entries() if index is not None else 0,
        "rss_mib": rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="prefix_aware,weighted,session_affinity,least_kv,power_of_two")
    p.add_argument("--replicas", default="10,100,1000")
    p.add_argument("--prefixes", default="100,10000,100000")
    p.add_argument("--streams", type=int, default=10_000, help="requests in flight throughout")
    p.add_argument("--decisions", type=int, default=20_000, help="timed decisions per cell")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"{args.streams} concurrent streams; {args.decisions} timed decisions per row\n")
    hdr = (
        f"{'policy':<17} {'replicas':>8} {'prefixes':>8} {'p50 us':>8} {'p99 us':>8} {'max us':>8} {'cpu p50':>8} {'cpu p99':>8} "
        f"{'index entries':>13} {'RSS MiB':>8}"
    )
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    worst = worst_cpu = 0.0
    for name in args.policies.split(","):
        for n in map(int, args.replicas.split(",")):
            for np_ in map(int, args.prefixes.split(",")):
                r = run(name, n, np_, args.streams, args.decisions, args.seed)
                if n == 1000:
                    worst = max(worst, r["p99_us"])
                    worst_cpu = max(worst_cpu, r["cpu_p99_us"])
                print(
                    f"{r['policy']:<17} {r['replicas']:8d} {r['prefixes']:8d} {r['p50_us']:8.1f} {r['p99_us']:8.1f} {r['max_us']:8.0f} "
                    f"{r['cpu_p50_us']:8.1f} {r['cpu_p99_us']:8.1f} "
                    f"{r['index_entries']:13,d} {r['rss_mib']:8.0f}",
                    flush=True,
                )
                gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nworst p99 at 1,000 replicas: {worst:.1f} us wall, {worst_cpu:.1f} us CPU (target <= 100 us)")
    print(f"peak RSS {peak:.0f} MiB (target < 1024)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
