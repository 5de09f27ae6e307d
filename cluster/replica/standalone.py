"""One replica outside Ray, in the foreground: `llm-cluster replica`.

For experiments and benchmarks (e.g. the router-overhead benchmark drives the
same replicas directly and through a router) and for routers that are not ours.
It serves the replica gRPC API; with ``--http-port`` also an OpenAI-compatible
HTTP API of its own (:mod:`cluster.replica.http_api`), so foreign gateways
(``vllm-router``, ``smg``) can route to the very same replicas as our router.
"""

from __future__ import annotations

import asyncio
import signal

from cluster.config import InternalTLSConfig, ModelConfig
from cluster.engine import make_engine
from cluster.logs import setup_logging
from cluster.metrics_server import start_metrics_server
from cluster.replica.http_api import start_replica_http
from cluster.replica.metrics import ReplicaMetrics
from cluster.replica.placement import choose_executor_backend
from cluster.replica.server import ReplicaServicer, start_server


async def run_standalone(
    model: ModelConfig,
    port: int = 0,
    host: str = "127.0.0.1",
    tls: InternalTLSConfig | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
) -> int:
    setup_logging()
    engine = await make_engine(model, executor_backend=choose_executor_backend(model))
    servicer = ReplicaServicer(engine, f"{model.name}-standalone", model.name)
    server, bound = await start_server(servicer, host=host, port=port, tls=tls)
    runner = None
    relay = f" relay {host}:{server.relay_port}"  # routers find it in Health; printed for people
    if http_port is not None:
        runner, http_bound = await start_replica_http(servicer, host, http_port)
        print(f"replica serving {model.name} on {host}:{bound} http http://{host}:{http_bound}{relay}", flush=True)
    else:
        print(f"replica serving {model.name} on {host}:{bound}{relay}", flush=True)
    if metrics_port is not None:
        metrics = ReplicaMetrics(model.name, servicer.replica_id)
        metrics.watch_load(engine.load)
        metrics.watch_in_flight(lambda: len(servicer.in_flight))
        engine.attach_metrics(metrics)
        _, mport = await start_metrics_server(metrics.registry, host, metrics_port)
        print(f"replica metrics on http://{host}:{mport}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if runner is not None:
        await runner.cleanup()
    await servicer.drain(5.0)
    await server.stop(1.0)
    await engine.shutdown()
    return 0
