"""`llm-cluster`: start, inspect, use and stop a cluster.

llm-cluster up [--engine sim --replicas 4] [--detach]   start Ray, controller, replicas, router
llm-cluster status                                      replicas, state, load
llm-cluster chat "What is the capital of France?"       a gRPC client
llm-cluster down                                        stop everything, leave no process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster import cli_autoscaler, cli_lora
from cluster.cli_config import add_config_args, config_from_args
from cluster.config import ClusterConfig, ConfigError, load_config
from cluster.ray_connect import ENV_MARKER, NoCluster, find_controller, join, local_ray_address, stop_local_processes

__all__ = ["ENV_MARKER", "build_parser", "main"]


# ---- commands ---------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from cluster.models.prepare import resolve_model_source

    for m in cfg.models:
        if m.engine == "vllm":
            resolve_model_source(m.source)  # converts the embedded model once, with a progress bar
    try:
        controller = find_controller(cfg, create=True, start=True)
    except NoCluster as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import ray

    from cluster.router.app import ROUTER_NAME, RouterActor

    router = (
        ray.remote(RouterActor)
        .options(name=ROUTER_NAME, lifetime="detached", num_cpus=0, max_concurrency=100, get_if_exists=True)
        .remote(cfg.model_dump())
    )
    ports = ray.get(router.start.remote())
    _wait_ready(controller, cfg, args.wait_timeout)
    print(f"llm-cluster is serving: gRPC localhost:{ports['grpc_port']}  HTTP http://localhost:{ports['http_port']}/v1", flush=True)
    if args.detach:
        print("detached; stop it with `llm-cluster down`")
        return 0
    print("press Ctrl-C to stop", flush=True)
    stop = False

    def _on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    while not stop:
        time.sleep(1.0)
        if local_ray_address() is None:  # `llm-cluster down` from another shell stopped it
            print("the cluster was stopped", flush=True)
            return 0
    print("\nstopping...")
    return cmd_down(args)


def _wait_ready(controller: Any, cfg: ClusterConfig, timeout_s: float) -> None:
    import ray
    from tqdm import tqdm

    want = sum(m.replicas for m in cfg.models)
    deadline = time.monotonic() + timeout_s
    with tqdm(total=want, desc="replicas ready", unit="replica", mininterval=1.0) as bar:
        while True:
            st = ray.get(controller.status.remote())
            ready = sum(m["ready"] for m in st["models"].values())
            if min(ready, want) != bar.n:
                bar.update(min(ready, want) - bar.n)
            if ready >= want:
                return
            if time.monotonic() > deadline:
                print(f"warning: only {ready}/{want} replicas ready after {timeout_s:.0f}s; see `llm-cluster status`", file=sys.stderr)
                return
            time.sleep(0.5)


def cmd_down(args: argparse.Namespace) -> int:
    import ray

    try:
        join(load_config(args.config).ray)
    except NoCluster:
        print("no running cluster found")
    else:
        from cluster.controller import CONTROLLER_NAME
        from cluster.router.app import ROUTER_NAME

        deadline = time.monotonic() + 20.0  # then whatever is left is killed below
        for name, method in ((ROUTER_NAME, "stop"), (CONTROLLER_NAME, "shutdown")):
            try:
                h = ray.get_actor(name)
                ray.get(getattr(h, method).remote(), timeout=max(1.0, deadline - time.monotonic()))
                ray.kill(h, no_restart=True)
            except ValueError:  # already gone
                pass
            except Exception as exc:  # dead, or too slow: killed with the rest
                print(f"{name}: {type(exc).__name__}", file=sys.stderr)
        ray.shutdown()
    # The Ray head `up` started, its workers and their engine processes all carry ENV_MARKER=owner_tag() in
    # their environment: stopping exactly those leaves any other Ray cluster on this machine alone (`ray stop`
    # would end every one of them).
    killed = stop_local_processes(grace_s=5.0)
    if getattr(args, "force", False):
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)
    print("llm-cluster stopped" + (f" ({killed} leftover processes killed)" if killed else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import ray

    try:
        controller = find_controller(load_config(args.config))
        st = ray.get(controller.status.remote(), timeout=30)
    except NoCluster as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    for name, m in st["models"].items():
        print(f"model {name}: engine={m['engine']} desired={m['desired']} ready={m['ready']}")
    cols = ("replica_id", "model", "state", "address", "in_flight", "running", "waiting", "kv_cache_usage", "age_s")
    rows = [[_cell(r.get(c)) for c in cols] for r in st["replicas"]]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cell(v: object) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def cmd_generate(args: argparse.Namespace, chat: bool) -> int:
    from cluster.client import stream_generate

    try:
        return asyncio.run(
            stream_generate(
                args.target,
                args.text,
                model=args.model,
                chat=chat,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                seed=args.seed,
                api_key=args.api_key or os.environ.get("LLM_CLUSTER_API_KEY"),
                ca_file=args.ca_file,
                tools_json=Path(args.tools).read_text() if getattr(args, "tools", None) else None,
                tool_choice=getattr(args, "tool_choice", None),
            )
        )
    except KeyboardInterrupt:
        return 130


def cmd_keys_new(args: argparse.Namespace) -> int:
    from cluster.router.auth import add_key_to_file, digest, new_key

    key = new_key()
    line = f"  - {{sha256: '{digest(key)}', tenant: {args.tenant}}}"
    if args.file:
        try:
            add_key_to_file(args.file, digest(key), args.tenant)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"added to {args.file} (tenant {args.tenant!r}); the router picks it up without a restart", file=sys.stderr)
    else:
        print("add this line under `keys:` in the key file (router.auth.key_file):", file=sys.stderr)
    print(key)
    print(line)
    print("the key is shown once and stored nowhere; give it to the tenant now", file=sys.stderr)
    return 0


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from cluster.models.prepare import resolve_model_source

    path = resolve_model_source(args.source)
    print(path)
    return 0


def cmd_router(args: argparse.Namespace) -> int:
    from cluster.logs import setup_logging
    from cluster.router.app import Router, run_loop, serve_forever
    from cluster.router.lora import ControllerAdmin
    from cluster.router.replicas import controller_source, static_source

    cfg = config_from_args(args)
    setup_logging(cfg.log_level)
    admin = None  # LoRA admin routes: the controller's, when there is one
    if args.replica:
        eps = [{"replica_id": f"static-{i}", "address": a} for i, a in enumerate(args.replica)]
        source = static_source({cfg.models[0].name: eps})
    else:
        try:
            # --create-controller (Kubernetes): the first router to start creates the controller from its
            # config; later ones join it.
            controller = find_controller(cfg, create=args.create_controller)
        except NoCluster as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        source, admin = controller_source(controller), ControllerAdmin(controller)
    from cluster.router.workers import resolve_workers, serve_workers

    if resolve_workers(cfg.router.workers) > 1:  # router.workers processes on the shared ports
        return serve_workers(cfg, {cfg.models[0].name: eps} if args.replica else None)
    try:
        run_loop(serve_forever(Router(cfg.router, source, cfg.internal_tls, admin=admin)))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_replica(args: argparse.Namespace) -> int:
    from cluster.replica.standalone import run_standalone

    # --http-port here is the replica's own OpenAI endpoint, not a router port.
    http_port, args.http_port = args.http_port, None
    cfg = config_from_args(args)
    return asyncio.run(run_standalone(cfg.models[0], args.port, args.host, cfg.internal_tls, http_port, args.metrics_port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_lifecycle_commands(sub)
    _add_client_commands(sub)
    _add_tool_commands(sub)
    cli_lora.add_parser(sub)
    _add_foreground_commands(sub)
    cli_autoscaler.add_parser(sub)
    return parser


def _add_lifecycle_commands(sub: Any) -> None:
    """up, down, status: a cluster's life."""
    p = sub.add_parser("up", help="start (or join) Ray, the controller, replicas and the router")
    add_config_args(p)
    p.add_argument("--detach", "-d", action="store_true", help="return once serving; stop later with `llm-cluster down`")
    p.add_argument("--wait-timeout", type=float, default=900, help="seconds to wait for replicas to become ready")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the router, replicas, controller and the Ray head `up` started")
    p.add_argument("--force", action="store_true", help="also stop every other Ray process on this machine (`ray stop --force`)")
    p.add_argument("--config", "-c", help="the YAML config the cluster was started with (for its ray section)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="replicas, their state and load")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", "-c", help="the YAML config the cluster was started with (for its ray section)")
    p.set_defaults(func=cmd_status)


def _add_client_commands(sub: Any) -> None:
    """chat, generate: gRPC clients of a router."""
    for name, chat in (("chat", True), ("generate", False)):
        p = sub.add_parser(name, help=f"{'chat with' if chat else 'complete a prompt on'} a model over gRPC, streaming")
        p.add_argument("text", help="the user message" if chat else "the prompt")
        p.add_argument("--target", default="localhost:50051", help="router gRPC address (default localhost:50051)")
        p.add_argument("--model", default=None, help="model name (default: the first the router lists)")
        p.add_argument("--max-tokens", type=int, default=128)
        p.add_argument("--temperature", type=float, default=0.0)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--api-key", default=None, help="API key (default: $LLM_CLUSTER_API_KEY); needed when router.auth is on")
        p.add_argument("--ca-file", default=None, help="use TLS, trusting this CA certificate (router.tls)")
        if chat:
            p.add_argument("--tools", default=None, help="JSON file of OpenAI tools the model may call (shown as [tool call] lines)")
            p.add_argument("--tool-choice", default=None, help="none, auto, required, or a function name (default: the model's)")
        p.set_defaults(func=lambda a, chat=chat: cmd_generate(a, chat))


def _add_tool_commands(sub: Any) -> None:
    """keys, models: utilities that need no cluster."""
    p = sub.add_parser("keys", help="API keys for router.auth")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    kp = ksub.add_parser("new", help="make a new API key for a tenant; prints the key and its hash line for the key file")
    kp.add_argument("--tenant", required=True, help="tenant the key belongs to (its limits are in the key file)")
    kp.add_argument("--file", default=None, help="also add the hash to this key file (the tenant is created with no limits if new)")
    kp.set_defaults(func=cmd_keys_new)

    p = sub.add_parser("models", help="model utilities")
    msub = p.add_subparsers(dest="models_command", required=True)
    mp = msub.add_parser("prepare", help="convert the embedded model (or check a local one) into the cache")
    mp.add_argument("source", nargs="?", default="embedded:smollm2-135m-instruct", help="embedded:<name>, a local dir or hub id")
    mp.set_defaults(func=cmd_models_prepare)


def _add_foreground_commands(sub: Any) -> None:
    """router, replica: one process of the cluster in the foreground."""
    p = sub.add_parser("router", help="run a router process in the foreground")
    add_config_args(p)
    p.add_argument(
        "--replica", action="append", default=[], metavar="HOST:PORT", help="route to these replicas instead of the controller's set"
    )
    p.add_argument(
        "--create-controller",
        action="store_true",
        help="create the controller from this config when none runs on the Ray cluster yet (the Helm chart's routers do)",
    )
    p.set_defaults(func=cmd_router)

    p = sub.add_parser("replica", help="run one replica outside Ray, in the foreground (experiments, foreign routers)")
    add_config_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="gRPC port (0: pick one, printed)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve vllm:* metrics on this port (0: pick one, printed)")
    p.epilog = (
        "--http-port P also serves an OpenAI-compatible HTTP API on the replica itself (0: pick one, printed), "
        "so foreign gateways (vllm-router, smg) can route to it"
    )
    p.set_defaults(func=cmd_replica)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
