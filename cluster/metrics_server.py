"""A small aiohttp server for one process's Prometheus registry (+ admin routes).

Every process of the cluster (router, controller, replica, autoscaler) serves
``GET /metrics`` on a port of its own, apart from its public API, so scraping
never competes with traffic for a front end's connection limits and the port
can be firewalled differently.  Runs on the caller's event loop (no thread).
Beside the registry it is given, every page carries the process's own
``process_*`` figures (CPU seconds, resident memory, open file descriptors,
start time: ``prometheus_client``'s ``ProcessCollector``, read from ``/proc``
at scrape time only), as every Prometheus target does; a router with several
workers has one set per worker (``worker="i"``), which is what an alert on a
saturated router process needs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: This process's own ``process_*`` metrics (``/proc/self``: right in whichever process serves the page).
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=PROCESS_REGISTRY)


async def start_metrics_server(
    registry: CollectorRegistry,
    host: str,
    port: int,
    extra_routes: dict[str, Handler] | None = None,
    before_scrape: Callable[[], None] | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``registry`` at ``/metrics`` (and ``/healthz``, plus ``extra_routes``); returns the runner and bound port.

    ``before_scrape`` refreshes gauges that are cheaper to compute per scrape than per event.
    """

    async def metrics(request: web.Request) -> web.Response:
        if before_scrape is not None:
            before_scrape()
        body = generate_latest(registry) + generate_latest(PROCESS_REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    for path, handler in (extra_routes or {}).items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port  # type: ignore[union-attr]
    return runner, bound
