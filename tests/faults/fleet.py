"""Pieces the fault tests share: in-process sim replicas, a router over them, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib

from cluster.config import RouterConfig
from cluster.engine.sim import SimEngine, SimParams
from cluster.replica.server import ReplicaServicer, start_server
from cluster.router.app import Router
from cluster.router.replicas import static_source

SIM = {"time_scale": 0.2}  # ~7 ms per decode step: a 40-token stream lasts ~0.3 s


def make_router(
    addresses: list[str],
    policy: str = "round_robin",
    timeout_s: float = 600.0,
    relay: dict[int, str] | None = None,
    **config: float | str,
) -> Router:
    """A router over ``addresses`` (gRPC); ``relay``: replica i's relay stream at another address (a proxy)."""
    eps = [{"replica_id": f"r{i}", "address": a, "max_model_len": "2048"} for i, a in enumerate(addresses)]
    for i, address in (relay or {}).items():
        eps[i]["relay_address"] = address
    cfg = RouterConfig(
        host="127.0.0.1", grpc_port=0, http_port=0, policy=policy, no_replica_wait_s=0.5, request_timeout_s=timeout_s, **config
    )
    return Router(cfg, static_source({"sim": eps}))


async def wait_until(pred, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def streaming(engine: SimEngine) -> int:
    """Requests on ``engine`` that have produced a few tokens already (mid-stream)."""
    return sum(seq.num_generated >= 3 for seq in list(engine.scheduler.running.values()))


class LocalReplicas:
    """Sim replicas in this process, each behind its own gRPC server."""

    def __init__(self) -> None:
        self.engines: list[SimEngine] = []
        self.servicers: list[ReplicaServicer] = []
        self.servers: list = []
        self.relay_addresses: list[str] = []

    async def add(self, **sim: float) -> str:
        i = len(self.engines)
        eng = SimEngine(SimParams.from_dict({**SIM, "seed": i, **sim}), model_name="sim")
        svc = ReplicaServicer(eng, f"r{i}", "sim")
        srv, port = await start_server(svc, "127.0.0.1", 0)
        self.engines.append(eng)
        self.servicers.append(svc)
        self.servers.append(srv)
        self.relay_addresses.append(f"127.0.0.1:{srv.relay_port}")
        return f"127.0.0.1:{port}"

    def busy(self) -> int:
        return sum(e.load().running + e.load().waiting for e in self.engines)

    async def stop(self) -> None:
        for srv in self.servers:
            await srv.stop(0.1)
        for eng in self.engines:
            await eng.shutdown()


class CuttableProxy:
    """A TCP proxy whose connections can be dropped at once, as a network fault would."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.transports: list[asyncio.Transport] = []
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self.transports += [writer.transport, up_writer.transport]  # type: ignore[list-item]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        for t in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.create_task(t)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def cut(self) -> None:
        """Reset every open connection, both sides (the replica and the router see a dead peer)."""
        for t in self.transports:
            t.abort()
        self.transports.clear()
        self.cuts += 1

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
