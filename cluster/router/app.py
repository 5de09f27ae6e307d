"""The router process: gRPC and HTTP front ends over one balancer, one event loop.

``Router`` is used three ways: by `llm-cluster router` (a plain process, e.g.
a Kubernetes Deployment beside a Ray cluster), inside :class:`RouterActor`
(what `llm-cluster up` starts, so `down` can find and stop it), and in tests
and benchmarks with a static endpoint list and no Ray at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from cluster.config import ClusterConfig, InternalTLSConfig, RouterConfig
from cluster.logs import setup_logging
from cluster.metrics_server import start_metrics_server
from cluster.router.balancer import Balancer
from cluster.router.circuit import CircuitBreaker
from cluster.router.gate import Gate
from cluster.router.grpc_server import InferenceServicer, start_grpc_server
from cluster.router.http_server import OpenAIServer, start_http_server
from cluster.router.lora import AdapterAdmin, ControllerAdmin
from cluster.router.metrics import RouterMetrics
from cluster.router.policies import make_policy
from cluster.router.replicas import EndpointSource, ReplicaSet, controller_source

log = logging.getLogger(__name__)

ROUTER_NAME = "llm-cluster-router"


class Router:
    def __init__(
        self,
        config: RouterConfig,
        source: EndpointSource,
        internal_tls: InternalTLSConfig | None = None,
        *,
        worker: bool = False,
        admin: AdapterAdmin | None = None,
    ) -> None:
        #: One of several router workers (cluster/router/workers.py): the public ports are shared
        #: (SO_REUSEPORT) and the metrics port is private, on loopback, scraped by the supervisor.
        self.worker = worker
        self.config = config
        #: Where the LoRA admin routes go (the controller); None: a fixed replica list, no runtime loads.
        self.admin = admin
        self.replicas = ReplicaSet(source, internal_tls, config.replica_transport, config.relay_pump)
        #: This router's metrics (its own registry): served on metrics_port, read by tests.
        self.metrics = RouterMetrics()
        self.balancer = Balancer(
            self.replicas,
            make_policy(config.policy, config.policy_options),
            no_replica_wait_s=config.no_replica_wait_s,
            max_attempts=config.max_attempts,
            first_token_timeout_s=config.first_token_timeout_s,
            breaker=CircuitBreaker(config.circuit_breaker, self.metrics),
            metrics=self.metrics,
            max_migrations=config.max_migrations,
            stall_timeout_s=config.stall_timeout_s,
            policy_options=config.policy_options,
            max_waiting_for_replica=config.max_waiting_for_replica,
        )
        # Auth, per-tenant limits and the admission queue, shared by both front ends.
        self.gate = Gate(config, self.balancer)
        self.replicas.on_change.append(self.gate.capacity_changed)
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._grpc = None
        self._http = None
        self._metrics = None

    async def start(self) -> None:
        await self.replicas.start()
        self.gate.start()
        self._grpc, self.grpc_port, _ = await start_grpc_server(
            InferenceServicer(self.balancer, self.config, self.gate), self.config.host, self.config.grpc_port
        )
        self._http, self.http_port = await start_http_server(
            OpenAIServer(self.balancer, self.config, self.gate, self.admin),
            self.config.host,
            self.config.http_port,
            reuse_port=self.worker,
        )
        m_host, m_port = ("127.0.0.1", 0) if self.worker else (self.config.host, self.config.metrics_port)
        try:
            self._metrics, self.metrics_port = await start_metrics_server(
                self.metrics.registry, m_host, m_port, before_scrape=self._refresh_gauges
            )
        except OSError as exc:
            # Serving traffic matters more than being scraped: say so loudly and go on.
            log.error("router metrics port unavailable; no /metrics", extra={"port": self.config.metrics_port, "err": str(exc)})
        ports = {"grpc_port": self.grpc_port, "http_port": self.http_port, "metrics_port": self.metrics_port}
        log.info("router serving", extra={**ports, "policy": self.config.policy})

    def _refresh_gauges(self) -> None:
        self.metrics.refresh_replica_gauges(self.replicas.by_model | {m: [] for m in self.replicas.models - set(self.replicas.by_model)})
        for layer, n in self.gate.held().items():
            self.metrics.held.labels(layer).set(n)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        if self._http is not None:
            await self._http.cleanup()
        self.gate.stop()
        if self._metrics is not None:
            await self._metrics.cleanup()
        await self.replicas.stop()


class RouterActor:
    """A detached Ray actor wrapping :class:`Router`, fed by the controller's watch."""

    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging()
        self.config = ClusterConfig.model_validate(config)
        self.router: Router | None = None

    async def start(self) -> dict[str, int]:
        if self.router is None:
            from cluster.ray_connect import find_controller

            controller = find_controller(self.config)  # in an actor: Ray is joined already
            self.router = Router(
                self.config.router, controller_source(controller), self.config.internal_tls, admin=ControllerAdmin(controller)
            )
            await self.router.start()
        return {"grpc_port": self.router.grpc_port, "http_port": self.router.http_port, "metrics_port": self.router.metrics_port}

    async def stop(self) -> None:
        if self.router is not None:
            await self.router.stop()
            self.router = None


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(main)`` on uvloop where it is installed (a dependency on Linux), else on the stdlib loop.

    Why: the relay is one socket read and one HTTP write per token on this loop, most of it in the loop's
    own work (docs/routing.md).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve_forever(router: Router) -> None:
    await router.start()
    try:
        await asyncio.Event().wait()
    finally:
        await router.stop()
