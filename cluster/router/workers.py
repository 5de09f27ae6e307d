"""Router workers: N router processes on one node sharing the public ports, one metrics endpoint for all.

Spec: with ``router.workers`` N > 1 (default: the cores this process may
use), `llm-cluster router` becomes a supervisor that starts N worker
processes.  Each is a whole :class:`~cluster.router.app.Router` (its own
event loop, endpoint watch, load streams, policy state and metrics) bound to
the same public gRPC and HTTP ports with SO_REUSEPORT, so the kernel spreads
new connections over them.  Each worker's metrics are on a private loopback
port; the supervisor serves them all on ``router.metrics_port``, every
sample labelled ``worker="i"`` (sum by the other labels for the router's
totals).  Every worker sees the same replicas' load reports and published
prefix keys, so prefix routing stays right whichever worker a request hits.

Restart: a worker that exits is started again; SIGHUP restarts the workers
one at a time (start the new one, wait until it serves, then SIGTERM the old
one, which stops accepting and lets its streams finish), so the others'
streams, and the node's ports, are never interrupted.  SIGTERM / SIGINT stop
all workers the same graceful way.

Failure modes: connections queued in a stopping worker's accept queue when it
closes its socket are reset (SO_REUSEPORT keeps one queue per socket); a
gRPC connection opened while a worker is starting was seen closed once
("Stream removed") on this machine (streams already open are not affected;
cause not found yet); sessions and per-router counts (in-flight, circuit
breaker) are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

#: How long a stopping worker may take to finish its streams.
DRAIN_S = 30.0
_START_TIMEOUT_S = 120.0


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(configured: int | None) -> int:
    return configured or default_workers()


def reserve_port(host: str, port: int) -> int:
    """``port``, or a free one when 0 (every worker must bind the same concrete port)."""
    if port:
        return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _worker_main(config: dict[str, Any], endpoints: dict | None, conn: Connection) -> None:
    """A worker process: one Router on the shared ports until SIGTERM."""
    from cluster.config import ClusterConfig
    from cluster.logs import setup_logging

    cfg = ClusterConfig.model_validate(config)
    setup_logging(cfg.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; a terminal's ^C reaches it
    _die_with_parent()
    from cluster.router.app import run_loop

    run_loop(_worker(cfg, endpoints, conn))


def _die_with_parent() -> None:
    """Kill this worker with the supervisor (Linux), as one router process would die, so no orphan keeps the ports."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


async def _worker(cfg: Any, endpoints: dict | None, conn: Connection) -> None:
    from cluster.router.app import Router
    from cluster.router.lora import ControllerAdmin
    from cluster.router.replicas import controller_source, static_source

    admin = None  # the LoRA admin routes need the controller
    if endpoints is not None:
        source = static_source(endpoints)
    else:
        from cluster.ray_connect import find_controller

        controller = find_controller(cfg)
        source, admin = controller_source(controller), ControllerAdmin(controller)
    router = Router(cfg.router, source, cfg.internal_tls, worker=True, admin=admin)
    await router.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()
    conn.send(router.metrics_port)
    while not stop.is_set():  # also stop if the supervisor is gone (no PR_SET_PDEATHSIG here)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if os.getppid() != parent:
            break
    await router.stop(DRAIN_S)


class Supervisor:
    """Starts, watches, restarts and stops the workers, and serves their metrics on one port."""

    def __init__(self, config: dict[str, Any], endpoints: dict | None, n: int) -> None:
        self.config = config
        self.endpoints = endpoints
        self.n = n
        self._ctx = multiprocessing.get_context("spawn")
        self.procs: list[multiprocessing.process.BaseProcess | None] = [None] * n
        self.metrics_ports: list[int] = [0] * n
        self._stopping = False
        self._rolling = False

    def start_worker(self, i: int) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(target=_worker_main, args=(self.config, self.endpoints, child), name=f"router-worker-{i}", daemon=False)
        p.start()
        child.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not parent.poll(0.2):
            if not p.is_alive() or time.monotonic() > deadline:
                p.kill()
                raise RuntimeError(f"router worker {i} did not start (exit code {p.exitcode})")
        self.metrics_ports[i] = parent.recv()
        self.procs[i] = p
        log.info("router worker serving", extra={"worker": i, "pid": p.pid})

    @staticmethod
    def stop_process(p: multiprocessing.process.BaseProcess | None) -> None:
        if p is None or not p.is_alive():
            return
        os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
        p.join(DRAIN_S + 5)
        if p.is_alive():
            p.kill()

    async def restart(self, i: int) -> None:
        """Start worker i again beside the old one, then let the old one finish its streams and exit."""
        old = self.procs[i]
        await asyncio.to_thread(self.start_worker, i)
        await asyncio.to_thread(self.stop_process, old)

    async def rolling_restart(self) -> None:
        if self._rolling:
            return
        self._rolling = True
        try:
            for i in range(self.n):
                await self.restart(i)
            log.info("router workers restarted", extra={"workers": self.n})
        finally:
            self._rolling = False

    async def watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            if self._rolling:
                continue
            for i, p in enumerate(self.procs):
                if p is not None and not p.is_alive() and not self._stopping:
                    log.warning("router worker exited; starting it again", extra={"worker": i, "exit_code": p.exitcode})
                    await asyncio.to_thread(self.start_worker, i)

    async def metrics(self, request: web.Request) -> web.Response:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            texts = await asyncio.gather(*(_scrape(s, port) for port in self.metrics_ports), return_exceptions=True)
        body = merge_metrics([t if isinstance(t, str) else "" for t in texts])
        return web.Response(text=body, content_type="text/plain", charset="utf-8", headers={"X-Workers": str(self.n)})

    def stop_all(self) -> None:
        self._stopping = True
        for p in self.procs:
            if p is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for p in self.procs:
            self.stop_process(p)


async def _scrape(s: aiohttp.ClientSession, port: int) -> str:
    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def merge_metrics(texts: list[str]) -> str:
    """Workers' Prometheus texts as one: each family once, its samples from every worker labelled ``worker``."""
    families: dict[str, list[str]] = {}
    heads: dict[str, list[str]] = {}
    for i, text in enumerate(texts):
        current = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                current = line.split(" ", 3)[2]
                families.setdefault(current, [])
                h = heads.setdefault(current, [])
                if len(h) < 2 and line not in h:
                    h.append(line)
                continue
            if not line or line.startswith("#"):
                continue
            name, brace, rest = line.partition("{")
            labelled = f'{name}{{worker="{i}",{rest}' if brace else line.replace(" ", f'{{worker="{i}"}} ', 1)
            families.setdefault(current, []).append(labelled.replace(",}", "}"))
    out: list[str] = []
    for fam, samples in families.items():
        out.extend(heads.get(fam, []))
        out.extend(samples)
    return "\n".join(out) + "\n"


def serve_workers(cfg: Any, endpoints: dict | None) -> int:
    """Run ``router.workers`` workers until SIGTERM / SIGINT; SIGHUP restarts them one by one."""
    rc = cfg.router
    n = resolve_workers(rc.workers)
    grpc_port, http_port = reserve_port(rc.host, rc.grpc_port), reserve_port(rc.host, rc.http_port)
    worker_cfg = cfg.model_copy(update={"router": rc.model_copy(update={"grpc_port": grpc_port, "http_port": http_port, "workers": 1})})
    sup = Supervisor(worker_cfg.model_dump(mode="json"), endpoints, n)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_supervise(sup, rc.host, rc.metrics_port, grpc_port, http_port))
    return 0


async def _supervise(sup: Supervisor, host: str, metrics_port: int, grpc_port: int, http_port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bg: set[asyncio.Task] = set()
    loop.add_signal_handler(signal.SIGHUP, lambda: bg.add(loop.create_task(sup.rolling_restart())))
    try:
        for i in range(sup.n):
            await asyncio.to_thread(sup.start_worker, i)
        app = web.Application()
        app.router.add_get("/metrics", sup.metrics)
        app.router.add_get("/healthz", lambda _r: web.json_response({"status": "ok", "workers": sup.n}))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, metrics_port, reuse_address=True)
        bound = 0
        try:
            await site.start()
            bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else metrics_port  # type: ignore[union-attr]
        except OSError as exc:  # serving traffic matters more than being scraped, as for one router process
            log.error("router metrics port unavailable; no /metrics", extra={"port": metrics_port, "err": str(exc)})
        log.info("router serving", extra={"grpc_port": grpc_port, "http_port": http_port, "metrics_port": bound, "workers": sup.n})
        print(f"router serving grpc :{grpc_port} http :{http_port} metrics :{bound} with {sup.n} workers", flush=True)
        watcher = loop.create_task(sup.watch())
        await stop.wait()
        watcher.cancel()
        await runner.cleanup()
    finally:
        await asyncio.to_thread(sup.stop_all)
