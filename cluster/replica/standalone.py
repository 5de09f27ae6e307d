"""One replica outside Ray, in the foreground: `llm-cluster replica`.

For experiments and benchmarks (e.g. the router-overhead benchmark drives the
same replicas directly and through a router) and for routers that are not ours.
"""

from __future__ import annotations

import asyncio
import signal

from cluster.config import InternalTLSConfig, ModelConfig
from cluster.engine import make_engine
from cluster.logs import setup_logging
from cluster.replica.placement import choose_executor_backend
from cluster.replica.server import ReplicaServicer, start_server


async def run_standalone(model: ModelConfig, port: int = 0, host: str = "127.0.0.1", tls: InternalTLSConfig | None = None) -> int:
    setup_logging()
    engine = await make_engine(model, executor_backend=choose_executor_backend(model))
    servicer = ReplicaServicer(engine, f"{model.name}-standalone", model.name)
    server, bound = await start_server(servicer, host=host, port=port, tls=tls)
    print(f"replica serving {model.name} on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await servicer.drain(5.0)
    await server.stop(1.0)
    await engine.shutdown()
    return 0
