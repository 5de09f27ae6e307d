"""Shared fixtures: sim replicas served over real gRPC on loopback, and helpers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest_asyncio

from cluster.config import InternalTLSConfig, RouterConfig
from cluster.engine.sim import SimEngine, SimParams
from cluster.ray_connect import prepare_env
from cluster.replica.server import ReplicaServicer, start_server
from cluster.router.app import Router
from cluster.router.replicas import static_source


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
        self.more_routers: list[Router] = []

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
        self._router_args = (cfg, eps, internal_tls)
        return self.router

    async def another_router(self) -> Router:
        """One more router over the same replicas and config (several router pods behind one Service)."""
        cfg, eps, tls = self._router_args
        r = Router(cfg, static_source({"sim": eps}), tls)
        await r.start()
        self.more_routers.append(r)
        return r

    async def stop(self) -> None:
        for r in self.more_routers:
            await r.stop(0.5)
        self.more_routers = []
        if self.router:
            await self.router.stop(0.5)
        for srv in self.servers:
            await srv.stop(0.1)
        for eng in self.engines:
            await eng.shutdown()


@pytest_asyncio.fixture
async def sim_fleet():
    # The router and sim replicas run in the suite's own process, which by now may hold every earlier test's
    # heap (vLLM, torch: ~700k objects, a full collection ~0.5 s): frozen, the collector skips it, so a
    # timing assertion here measures the router, not a GC pass over other tests' objects.
    gc.freeze()
    fleet = SimFleet()
    try:
        yield fleet
        await fleet.stop()
    finally:
        gc.unfreeze()
    # Nothing the router or replicas started may outlive them.
    await asyncio.sleep(0)


# ---- Ray-backed deployments (controller + router over a real local Ray) ----------------------------


#: Config overrides every test deployment starts with: its router on loopback, every port ephemeral (a test
#: never takes the ports a user's own cluster on this machine may hold).
LOOPBACK = [
    "router.host=127.0.0.1",
    "router.grpc_port=0",
    "router.http_port=0",
    "router.metrics_port=0",
    "controller.metrics_port=0",
]


@contextlib.contextmanager
def local_ray(namespace: str, num_cpus: int = 2, address: str = "local") -> Iterator[None]:
    """A Ray cluster of the test's own (``address="local"``: even when another Ray runs on this machine),
    or ``address`` of a ``ray.cluster_utils.Cluster``; the controller is shut down before Ray."""
    # What every command does before it touches Ray: a local cluster stays on 127.0.0.1, so no test traffic
    # leaves 127.0.0.0/8 (set here, where the test starts Ray, not for the CLI's subprocesses).
    prepare_env()
    import ray

    from cluster.controller import CONTROLLER_NAME

    for attempt in range(3):
        try:
            if address == "local":
                ray.init(address="local", num_cpus=num_cpus, namespace=namespace, include_dashboard=False, logging_level="WARNING")
            else:
                ray.init(address=address, namespace=namespace, logging_level="WARNING")
            break
        except Exception as exc:
            # Seen on a loaded 2-core CI machine: a fresh head's GCS misses Ray's start-up deadline ("Timed
            # out waiting for file .../gcs_server_port", "node timed out during startup").  That is Ray
            # starting, not what these tests test: try again with a new head.
            ray.shutdown()
            if attempt == 2:
                raise
            logging.getLogger(__name__).warning("ray.init failed; retrying", extra={"error": str(exc)[:200]})
            time.sleep(2)
    try:
        yield
    finally:
        try:
            ray.get(ray.get_actor(CONTROLLER_NAME).shutdown.remote(), timeout=120)
        except Exception:
            pass  # the test already removed it, or it never started
        ray.shutdown()


async def wait_for(pred: Callable[[], bool], timeout_s: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def start_deployment(overrides: list[str], ready: int, timeout_s: float = 30.0, watch_timeout_s: float = 5.0):
    """Controller (from the config) + an in-process router fed by its endpoint watch, once ``ready`` replicas
    of the first model are routable.  Returns (config, controller, router); stop the router when done."""
    from cluster.config import load_config
    from cluster.controller import get_or_create_controller
    from cluster.router.replicas import controller_source

    cfg = load_config(overrides=overrides)
    controller = get_or_create_controller(cfg)
    router = Router(cfg.router, controller_source(controller, timeout_s=watch_timeout_s))
    await router.start()
    model = cfg.models[0].name
    await wait_for(lambda: len(router.replicas.by_model.get(model, [])) >= ready, timeout_s, f"{ready} ready replica(s) of {model}")
    return cfg, controller, router


def start_ray_cluster(head_args: dict, worker_args: list[dict]):
    """A multi-node ``ray.cluster_utils.Cluster`` (head + workers), started again if a node misses Ray's own
    start-up deadline (seen on the 2-core CI machine right after another test's cluster shut down).  Returns
    (cluster, worker nodes); the caller shuts the cluster down."""
    prepare_env()  # its nodes on 127.0.0.1, as in local_ray
    from ray.cluster_utils import Cluster

    for attempt in range(3):
        c = None
        try:
            c = Cluster(initialize_head=True, head_node_args=head_args)
            workers = [c.add_node(**w) for w in worker_args]
            c.wait_for_nodes()
            return c, workers
        except Exception as exc:
            if c is not None:
                with contextlib.suppress(Exception):
                    c.shutdown()
            if attempt == 2:
                raise
            logging.getLogger(__name__).warning("Ray cluster start failed; retrying", extra={"error": str(exc)[:200]})
            time.sleep(2)
    raise AssertionError("unreachable")
