"""One replica outside Ray, in the foreground: `llm-cluster replica`.

For experiments and benchmarks (e.g. the router-overhead benchmark drives the
same replicas directly and through a router) and for routers that are not ours.

With ``--http-port`` the replica also serves an OpenAI-compatible HTTP API of
its own (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/health``, plus the model/server-info probes SGLang-style gateways call),
so foreign gateways (``vllm-router``, ``smg``) can route to the very same
replicas as our router.  It is our router's HTTP front end over a one-replica
balancer that reaches this replica's gRPC server on loopback: one code path
for the OpenAI API, at the cost of one local gRPC hop (well under a
millisecond) on the foreign gateways' side of a comparison.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from cluster.config import InternalTLSConfig, ModelConfig, RouterConfig
from cluster.engine import make_engine
from cluster.logs import setup_logging
from cluster.metrics_server import start_metrics_server
from cluster.replica.metrics import ReplicaMetrics
from cluster.replica.placement import choose_executor_backend
from cluster.replica.server import ReplicaServicer, start_server
from cluster.router.balancer import Balancer
from cluster.router.http_server import OpenAIServer, start_http_server
from cluster.router.policies import make_policy
from cluster.router.replicas import ReplicaSet, static_source


def replica_http_app(balancer: Balancer, config: RouterConfig, servicer: ReplicaServicer, max_model_len: int) -> OpenAIServer:
    """The OpenAI API of one replica, with the extra probes gateways use."""
    server = OpenAIServer(balancer, config)

    async def model_info(request: web.Request) -> web.Response:
        return web.json_response(
            {"model_path": servicer.model, "tokenizer_path": servicer.model, "is_generation": True, "max_model_len": max_model_len}
        )

    async def server_info(request: web.Request) -> web.Response:
        snap = servicer.load_report()
        return web.json_response(
            {
                "model_path": servicer.model,
                "served_model_name": servicer.model,
                "max_total_num_tokens": snap.kv_capacity_tokens,
                "running": snap.running,
                "waiting": snap.waiting,
                "kv_cache_usage": snap.kv_cache_usage,
                "prefix_cache_queries": snap.prefix_cache_queries,
                "prefix_cache_hits": snap.prefix_cache_hits,
            }
        )

    async def load(request: web.Request) -> web.Response:
        snap = servicer.load_report()
        return web.json_response({"running": snap.running, "waiting": snap.waiting, "load": snap.running + snap.waiting})

    server.app.router.add_get("/get_model_info", model_info)
    server.app.router.add_get("/get_server_info", server_info)
    server.app.router.add_get("/server_info", server_info)
    server.app.router.add_get("/get_load", load)
    server.app.router.add_get("/health_generate", server.healthz)
    return server


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
    replicas = runner = None
    if http_port is not None:
        replicas = ReplicaSet(
            static_source(
                {
                    model.name: [
                        {"replica_id": servicer.replica_id, "address": f"127.0.0.1:{bound}", "max_model_len": str(engine.max_model_len)}
                    ]
                }
            ),
            tls=tls,
        )
        await replicas.start()
        cfg = RouterConfig(host=host, http_port=http_port, policy="round_robin", max_attempts=1)
        balancer = Balancer(replicas, make_policy("round_robin"), max_attempts=1)
        runner, http_bound = await start_http_server(replica_http_app(balancer, cfg, servicer, engine.max_model_len), host, http_port)
        print(f"replica serving {model.name} on {host}:{bound} http http://{host}:{http_bound}", flush=True)
    else:
        print(f"replica serving {model.name} on {host}:{bound}", flush=True)
    if metrics_port is not None:
        metrics = ReplicaMetrics(model.name, servicer.replica_id)
        metrics.watch_load(engine.load)
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
    if replicas is not None:
        await replicas.stop()
    await servicer.drain(5.0)
    await server.stop(1.0)
    await engine.shutdown()
    return 0
