"""A router process killed and restarted: nothing is lost with it, and clients reconnect.

The router holds no state that matters beyond its life: its endpoint set comes
from its source (the controller's watch, or here a static list), and its
in-flight counts describe only its own requests.  So a router killed with
SIGKILL and started again on the same ports serves exactly as before; a stream
that was relaying through it ends for the client with a clear error, and its
engine slot on the replica is freed.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import grpc
import pytest

from cluster.client import build_request
from cluster.proto import inference_pb2_grpc
from loadtests.procs import Procs, free_port, wait_port
from tests.faults.fleet import LocalReplicas, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


def spawn_router(procs: Procs, grpc_port: int, http_port: int, replicas: list[str]) -> None:
    # One router process (router.workers: 1): this is about a router process's own death and restart;
    # tests/integration/test_router_workers.py covers workers and their restarts.
    args = ["router", "--engine", "sim", "--set", "models.0.name=sim", "--set", "router.host=127.0.0.1", "--set", "router.workers=1"]
    args += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    args += [a for r in replicas for a in ("--replica", r)]
    procs.spawn(args)
    wait_port(grpc_port)
    wait_port(http_port)


async def complete_both_ways(stub: inference_pb2_grpc.InferenceStub, session: aiohttp.ClientSession, http_port: int, n: int) -> int:
    ok = 0
    for i in range(n):
        req = build_request(f"after {i}", model="sim", chat=True, max_tokens=5)
        chunks = [c async for c in stub.Generate(req, timeout=10, wait_for_ready=True)]
        ok += chunks[-1].finish_reason == "length"
        body = {"model": "sim", "prompt": f"after {i}", "max_tokens": 5}
        async with session.post(f"http://127.0.0.1:{http_port}/v1/completions", json=body) as r:
            ok += r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 5
    return ok


async def test_a_killed_router_restarts_on_its_ports_and_clients_reconnect():
    local = LocalReplicas()
    procs = Procs()
    grpc_port, http_port = free_port(), free_port()
    try:
        replicas = [await local.add(), await local.add()]
        await asyncio.to_thread(spawn_router, procs, grpc_port, http_port, replicas)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, aiohttp.ClientSession() as session:
            stub = inference_pb2_grpc.InferenceStub(channel)
            assert await complete_both_ways(stub, session, http_port, 3) == 6

            # A long stream is relaying when the router dies.
            call = stub.Generate(build_request("long", model="sim", chat=True, max_tokens=3000))
            await call.read()
            assert local.busy() == 1
            os.kill(procs.procs[0].pid, signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while await call.read() != grpc.aio.EOF:
                    pass
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # a clear error, not a hang
            await wait_until(lambda: local.busy() == 0, 5)  # the replica freed the orphaned slot

            await asyncio.to_thread(spawn_router, procs, grpc_port, http_port, replicas)
            # The same channel and session reconnect by themselves.
            assert await complete_both_ways(stub, session, http_port, 3) == 6
    finally:
        procs.stop()
        await local.stop()
