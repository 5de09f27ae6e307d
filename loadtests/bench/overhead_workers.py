"""Our router's workers, one by one, during :mod:`loadtests.bench.router_overhead`'s 16-token runs.

Why: with ``router.workers`` N > 1 the kernel spreads client connections over the workers (SO_REUSEPORT), and each
worker wakes whenever a replica's engine step sends tokens to any of its streams: a worker's wake-ups per second
are set by the engines' steps, not by its share of the streams.  Each wake-up costs a context switch and a cold
start of the interpreter on its core, so a worker with few streams pays nearly the same per second as a busy one
and more per request.  This table shows it: per worker, its share of the requests (from the router's own
``llm_cluster_router_requests_total{worker="i"}``), its CPU per request and its wake-ups per second (voluntary
context switches, ``/proc/PID/status``).  Worker ``i`` is the process whose start time is that worker's
``process_start_time_seconds{worker="i"}``; a router of one worker is its own process.
"""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")
_REQUESTS = re.compile(r"^llm_cluster_router_requests_total\{([^}]*)\} (\S+)$", re.M)
_WORKER = re.compile(r'worker="(\d+)"')
_STARTED = re.compile(r'^process_start_time_seconds\{worker="(\d+)"\} (\S+)$', re.M)
_VCS = re.compile(r"^voluntary_ctxt_switches:\s+(\d+)$", re.M)


def stat(pid: int) -> list[str]:
    """``/proc/PID/stat``'s fields after the command name: [0] state, [1] parent, [11] utime, [12] stime, [19] start."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def processes() -> Iterator[tuple[int, list[str]]]:
    """Every live process's pid and :func:`stat` fields (one that ends while being read is left out)."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                yield int(d), stat(int(d))
            except OSError:
                continue


def cpu_seconds(fields: list[str]) -> tuple[float, float]:
    """(user, system) CPU seconds of a process's :func:`stat` fields."""
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def worker_pids(supervisor: int, metrics_port: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's spawned children, not its resource tracker), in the order of
    their ``worker`` label: matched by start time, which the router's metrics and ``/proc`` both give."""
    pids = []
    for pid, fields in processes():
        if int(fields[1]) == supervisor:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"--multiprocessing-fork" in f.read():
                        pids.append(pid)
            except OSError:
                continue
    started = {int(w): float(t) for w, t in _STARTED.findall(_scrape(metrics_port))}
    if sorted(started) != list(range(len(pids))):
        raise RuntimeError(f"workers {sorted(started)} in the router's metrics, {len(pids)} worker processes")
    return [min(pids, key=lambda p: abs(start_time(p) - started[w])) for w in range(len(pids))]


def start_time(pid: int) -> float:
    """When ``pid`` started (seconds since the epoch), as prometheus_client's ``process_start_time_seconds``."""
    with open("/proc/stat") as f:
        boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(stat(pid)[19]) / TICK


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@dataclass
class Sample:
    """Each worker's CPU seconds and voluntary context switches, and its requests so far, at one moment."""

    cpu_s: list[float]
    switches: list[int]
    requests: list[float]


@dataclass
class Worker:
    requests: float = 0.0
    cpu_s: float = 0.0
    switches: int = 0


@dataclass
class Workers:
    """One of our routers' worker processes (label order; one worker: the router process itself), and what each
    did over the runs :meth:`add` was given."""

    pids: list[int]
    metrics_port: int
    workers: list[Worker] = field(default_factory=list)
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        self.workers = [Worker() for _ in self.pids]

    def sample(self) -> Sample:
        cpu, switches = [], []
        for p in self.pids:
            cpu.append(sum(cpu_seconds(stat(p))))
            with open(f"/proc/{p}/status") as f:
                m = _VCS.search(f.read())
            switches.append(int(m.group(1)) if m else 0)
        requests = [0.0] * len(self.pids)
        for labels, value in _REQUESTS.findall(_scrape(self.metrics_port)):
            m = _WORKER.search(labels)  # no worker label: a router of one worker
            i = int(m.group(1)) if m else 0
            if i < len(requests):
                requests[i] += float(value)
        return Sample(cpu, switches, requests)

    def add(self, before: Sample, after: Sample, wall_s: float) -> None:
        for i, w in enumerate(self.workers):
            w.requests += after.requests[i] - before.requests[i]
            w.cpu_s += after.cpu_s[i] - before.cpu_s[i]
            w.switches += after.switches[i] - before.switches[i]
        self.wall_s += wall_s


def report(systems: dict[str, Workers]) -> dict[str, list[dict[str, float]]]:
    """Print each of our systems' workers (one: the router process itself); return the figures."""
    out: dict[str, list[dict[str, float]]] = {}
    rows = {s: ws for s, ws in systems.items() if ws.workers}
    if not rows:
        return out
    hdr = f"\n{'16-token runs, by worker':<26} {'requests':>9} {'CPU/request':>12} {'wake-ups/s':>11} {'wake-ups/request':>17}"
    print(hdr + "\n" + "-" * (len(hdr) - 1))
    for s, ws in rows.items():
        total = sum(w.requests for w in ws.workers) or 1.0
        out[s] = []
        for i, w in enumerate(ws.workers):
            per_req = w.cpu_s / w.requests * 1e6 if w.requests else float("nan")
            wakes = w.switches / ws.wall_s if ws.wall_s else float("nan")
            per_req_wakes = w.switches / w.requests if w.requests else float("nan")
            print(f"{s + ' worker ' + str(i):<26} {100 * w.requests / total:8.0f}% {per_req:9,.0f} us {wakes:11,.0f} {per_req_wakes:17.1f}")
            out[s].append({"request_share": w.requests / total, "cpu_us_per_request": per_req, "wakeups_per_s": wakes})
    print("a worker's wake-ups per second are the engines' steps, whatever its share of the streams (see the module's docstring)")
    return out
