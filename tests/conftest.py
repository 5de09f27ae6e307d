"""Shared fixtures: sim replicas served over real gRPC on loopback, and helpers."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest_asyncio

from cluster.config import InternalTLSConfig, RouterConfig
from cluster.engine.sim import SimEngine, SimParams
from cluster.replica.server import ReplicaServicer, start_server
from cluster.router.app import Router
from cluster.router.replicas import static_source

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every Ray node a test starts (ray.init, ray.cluster_utils.Cluster, `llm-cluster up`) uses the loopback address,
# so no test traffic leaves 127.0.0.0/8 (Ray would otherwise pick the machine's outward-facing address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimFleet:
    """N sim replicas, each behind its own replica gRPC server, plus a router over them."""

    def __init__(self) -> None:
        self.engines: list[SimEngine] = []
        self.servicers: list[ReplicaServicer] = []
        self.servers: list = []
        self.router: Router | None = None

    async def start(
        self,
        n: int,
        policy: str = "round_robin",
        *,
        router: dict | None = None,
        servicers: dict[int, type[ReplicaServicer]] | None = None,
        internal_tls: InternalTLSConfig | None = None,
        **sim: object,
    ) -> Router:
        """``router``: extra RouterConfig fields (auth, admission, tls...); ``servicers``: a servicer class for
        replica i (fault injection); ``internal_tls``: mutual TLS between router and replicas."""
        eps = []
        for i in range(n):
            eng = SimEngine(SimParams.from_dict({"time_scale": 0.05, "seed": i, **sim}), model_name="sim")
            svc = (servicers or {}).get(i, ReplicaServicer)(eng, f"r{i}", "sim")
            srv, port = await start_server(svc, "127.0.0.1", 0, tls=internal_tls)
            self.engines.append(eng)
            self.servicers.append(svc)
            self.servers.append(srv)
            eps.append({"replica_id": f"r{i}", "address": f"127.0.0.1:{port}", "max_model_len": str(eng.max_model_len)})
        cfg = RouterConfig.model_validate(
            {
                "host": "127.0.0.1",
                "grpc_port": 0,
                "http_port": 0,
                "metrics_port": 0,
                "policy": policy,
                "no_replica_wait_s": 0.5,
                **(router or {}),
            }
        )
        self.router = Router(cfg, static_source({"sim": eps}), internal_tls)
        await self.router.start()
        return self.router

    async def stop(self) -> None:
        if self.router:
            await self.router.stop(0.5)
        for srv in self.servers:
            await srv.stop(0.1)
        for eng in self.engines:
            await eng.shutdown()


@pytest_asyncio.fixture
async def sim_fleet():
    fleet = SimFleet()
    yield fleet
    await fleet.stop()
    # Nothing the router or replicas started may outlive them.
    await asyncio.sleep(0)
