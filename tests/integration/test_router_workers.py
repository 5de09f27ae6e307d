"""`llm-cluster router` with router.workers: several processes on one port pair, one metrics endpoint, rolling restarts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import aiohttp
import grpc
import pytest

from cluster.client import build_request
from cluster.proto import inference_pb2_grpc
from loadtests.procs import Procs, free_port, wait_port
from tests.faults.fleet import LocalReplicas
from tests.prometheus_server import query, running_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


def children(pid: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    tracker = b"resource_tracker" in f.read()
            except OSError:
                continue
            if parent == pid and not tracker:
                out.add(int(d))
    return out


def spawn_router(procs: Procs, ports: tuple[int, int, int], replicas: list[str], workers: int):
    grpc_port, http_port, metrics_port = ports
    args = ["router", "--engine", "sim", "--set", "models.0.name=sim", "--set", "router.host=127.0.0.1"]
    args += ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--set", f"router.metrics_port={metrics_port}"]
    args += ["--set", f"router.workers={workers}", *[a for r in replicas for a in ("--replica", r)]]
    p = procs.spawn(args)
    for port in ports:
        wait_port(port, 120)
    return p


async def complete(http_port: int, n: int, max_tokens: int = 3) -> list[int]:
    """``n`` requests, each on a new connection (so the kernel spreads them over the workers)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

        async def one(i: int) -> int:
            body = {"model": "sim", "prompt": f"hello {i}", "max_tokens": max_tokens}
            async with s.post(f"http://127.0.0.1:{http_port}/v1/completions", json=body) as r:
                assert r.status == 200, await r.text()
                return (await r.json())["usage"]["completion_tokens"]

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def scrape(metrics_port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def requests_by_worker(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llm_cluster_router_requests_total{"):
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            out[worker] = out.get(worker, 0) + float(line.rsplit(" ", 1)[1])
    return out


async def test_two_workers_share_the_ports_and_one_metrics_endpoint_counts_them_all():
    local, procs = LocalReplicas(), Procs()
    ports = (free_port(), free_port(), free_port())
    try:
        replicas = [await local.add(), await local.add()]
        sup = await asyncio.to_thread(spawn_router, procs, ports, replicas, 2)
        assert len(children(sup.pid)) == 2
        assert await complete(ports[1], 30) == [3] * 30
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as ch:
            chunks = [
                c async for c in inference_pb2_grpc.InferenceStub(ch).Generate(build_request("x", model="sim", chat=False, max_tokens=2))
            ]
            assert chunks[-1].finish_reason == "length"
        page = await scrape(ports[2])
        by_worker = requests_by_worker(page)
        assert set(by_worker) == {"0", "1"}, by_worker  # both served: the kernel spread the connections
        assert sum(by_worker.values()) == 31
        # Each worker's own process figures, apart: its CPU seconds and its start time, one per worker process.
        cpu = {w: float(v) for w, v in re.findall(r'^process_cpu_seconds_total\{worker="(\d)"\} (\S+)$', page, re.M)}
        started = re.findall(r'^process_start_time_seconds\{worker="(\d)"\} (\S+)$', page, re.M)
        assert set(cpu) == {"0", "1"} and all(v > 0 for v in cpu.values()), cpu
        assert len({t for _, t in started}) == 2, started
    finally:
        procs.stop()
        await local.stop()


async def test_a_rolling_restart_replaces_every_worker_and_drops_no_stream():
    local, procs = LocalReplicas(), Procs()
    ports = (free_port(), free_port(), free_port())
    try:
        replicas = [await local.add(decode_base_ms=150.0), await local.add(decode_base_ms=150.0)]
        sup = await asyncio.to_thread(spawn_router, procs, ports, replicas, 2)
        before = children(sup.pid)
        streams = asyncio.gather(complete(ports[1], 8, max_tokens=150))  # ~4.5 s each
        await asyncio.sleep(1.0)
        os.kill(sup.pid, signal.SIGHUP)  # restart the workers one at a time
        assert await streams == [[150] * 8]  # every stream finished in full, on whichever worker it was
        for _ in range(120):
            after = children(sup.pid)
            if len(after) == 2 and not after & before:
                break
            await asyncio.sleep(0.5)
        assert len(after) == 2 and not after & before, (before, after)
        assert await complete(ports[1], 6) == [3] * 6
    finally:
        procs.stop()
        await local.stop()


def dashboard_query(title: str) -> str:
    """The committed Grafana dashboard's query of the panel ``title``."""
    board = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "llm-cluster.json").read_text())
    return next(p for p in board["panels"] if p["title"] == title)["targets"][0]["expr"]


async def test_the_dashboards_router_cpu_panel_shows_each_worker_and_no_other_process():
    promql = dashboard_query("Router CPU by worker").replace("$__rate_interval", "5s")
    local, procs = LocalReplicas(), Procs()
    ports = (free_port(), free_port(), free_port())
    # The router under a job name of the operator's choosing; Prometheus's own process_* beside it, to be left out.
    config = f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: edge-gateway
    static_configs: [{{targets: ["127.0.0.1:{ports[2]}"]}}]
  - job_name: self
    static_configs: [{{targets: ["$SELF"]}}]
"""
    try:
        replicas = [await local.add(), await local.add()]
        await asyncio.to_thread(spawn_router, procs, ports, replicas, 2)
        with running_prometheus(config) as url:
            assert await complete(ports[1], 20) == [3] * 20
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                series, itself = await query(url, promql), await query(url, 'rate(process_cpu_seconds_total{job="self"}[5s])')
                if len(series) >= 2 and itself:
                    break
                await asyncio.sleep(0.5)
            assert sorted(s["metric"].get("worker") for s in series) == ["0", "1"], series
            assert {s["metric"]["job"] for s in series} == {"edge-gateway"}
            assert all(float(s["value"][1]) >= 0 for s in series)  # cores, as a rate (an idle worker's may round to 0)
            assert itself  # Prometheus's own CPU was scraped too, and the panel left it out
    finally:
        procs.stop()
        await local.stop()
