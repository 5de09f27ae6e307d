"""Start the real commands (`llm-cluster replica`, `llm-cluster router`) as processes, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port}")


@dataclass
class Procs:
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, args: list[str], cpu: int | None = None) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "cluster.cli", *args]
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        env = os.environ | {"LLM_CLUSTER_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def start_sim_replica(procs: Procs, engine_args: str, cpu: int | None = None) -> str:
    p = procs.spawn(["replica", "--engine", "sim", "--set", f"models.0.engine_args={engine_args}", "--port", "0"], cpu)
    assert p.stdout is not None
    line = p.stdout.readline()
    m = re.search(r"on ([\d.]+):(\d+)", line)
    if not m:
        raise RuntimeError(f"replica did not start: {line!r}")
    return f"{m.group(1)}:{m.group(2)}"


def start_router(
    procs: Procs, replicas: list[str], policy: str = "round_robin", cpu: int | None = None, overrides: list[str] | None = None
) -> tuple[int, int]:
    """A router process over ``replicas``; ``overrides``: extra ``--set PATH=VALUE`` config fields."""
    grpc_port, http_port = free_port(), free_port()
    args = ["router", "--engine", "sim", "--policy", policy, "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    args += [a for r in replicas for a in ("--replica", r)]
    args += ["--set", "router.host=127.0.0.1"]
    args += [a for o in overrides or () for a in ("--set", o)]
    procs.spawn(args, cpu)
    wait_port(grpc_port)
    wait_port(http_port)
    return grpc_port, http_port


@contextlib.contextmanager
def running() -> Iterator[Procs]:
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop()
