"""``llm-cluster autoscaler``: the autoscaler loop in the foreground (metrics source -> policy -> actuator)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from cluster.cli_config import config_from_args
from cluster.ray_connect import NoCluster


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "autoscaler",
        help="scale a model's replicas from its metrics (Prometheus or direct scrape) on Ray or Kubernetes",
        description="Run the autoscaler loop (metrics source -> target-tracking policy -> actuator) in the foreground. "
        "Configured by the `autoscaler` section of the cluster config; see docs/autoscaling.md.",
    )
    p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help="override a config field, repeatable")
    p.add_argument("--ray-address", help="the Ray cluster whose controller to scale (ray.address)")
    p.add_argument("--model", help="the model to scale (autoscaler.model; default: the first model)")
    p.set_defaults(engine=None, replicas=None, policy=None, grpc_port=None, http_port=None)
    p.add_argument("--prometheus", metavar="URL", help="read metrics from this Prometheus (autoscaler.source.prometheus_url)")
    p.add_argument("--scrape", action="store_true", help="scrape the replicas directly instead of asking Prometheus")
    p.add_argument("--metrics-port", type=int, help="the autoscaler's own /metrics port (autoscaler.metrics_port, default 9402)")
    p.add_argument("--once", action="store_true", help="decide once, print the decision as JSON, and exit")
    p.add_argument("--dry-run", action="store_true", help="log decisions without changing the replica count")
    p.set_defaults(func=cmd_autoscaler)


def cmd_autoscaler(args: argparse.Namespace) -> int:
    from cluster.autoscaler.actuators import ActuatorError
    from cluster.autoscaler.build import build_autoscaler, target_model
    from cluster.logs import setup_logging
    from cluster.metrics_server import start_metrics_server

    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"autoscaler.model={args.model}")
    if args.prometheus:
        overrides += ["autoscaler.source.kind=prometheus", f"autoscaler.source.prometheus_url={args.prometheus}"]
    if args.scrape:
        overrides.append("autoscaler.source.kind=scrape")
    if args.metrics_port is not None:
        overrides.append(f"autoscaler.metrics_port={args.metrics_port}")
    args.overrides = overrides
    args.model = None  # here --model names the model to scale, not a model source
    cfg = config_from_args(args)
    setup_logging(cfg.log_level)
    a = cfg.autoscaler
    try:
        scaler = build_autoscaler(cfg, dry_run=args.dry_run)  # joins Ray where the actuator or source needs it
    except (ActuatorError, NoCluster) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def main() -> None:
        runner, port = await start_metrics_server(scaler.metrics.registry, "0.0.0.0", a.metrics_port)
        print(
            f"autoscaling {target_model(cfg)} ({a.source.kind} -> {a.policy.metric} target {a.policy.target:g}/replica -> "
            f"{a.actuator.kind}{', dry run' if args.dry_run else ''}); metrics on :{port}/metrics",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await scaler.run(stop, once=args.once)
            if args.once and scaler.decisions:
                d = scaler.decisions[-1]
                print(json.dumps({"action": d.action, "current": d.current, "desired": d.desired, "reason": d.reason, "detail": d.detail}))
        finally:
            await scaler.close()
            await runner.cleanup()

    asyncio.run(main())
    return 0
