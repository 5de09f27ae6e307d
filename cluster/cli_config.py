"""The config flags every `llm-cluster` command that reads cluster.yaml shares, and the config they make."""

from __future__ import annotations

import argparse

from cluster.config import ClusterConfig, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help="override a config field, repeatable")
    p.add_argument("--engine", choices=["vllm", "sim"], help="engine backend of every model (models.N.engine)")
    p.add_argument("--replicas", type=int, help="replicas of every model (models.N.replicas)")
    p.add_argument("--model", help="serve this model source instead of the embedded default (models.0.source)")
    p.add_argument("--policy", help="routing policy (router.policy)")
    p.add_argument("--grpc-port", type=int, help="router gRPC port (router.grpc_port, default 50051)")
    p.add_argument("--http-port", type=int, help="router HTTP port (router.http_port, default 8000)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one (ray.address)")


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    overrides = list(args.overrides)
    base = load_config(args.config, overrides)
    n_models = len(base.models)
    for i in range(n_models):
        if args.engine:
            overrides.append(f"models.{i}.engine={args.engine}")
        if args.replicas is not None:
            overrides.append(f"models.{i}.replicas={args.replicas}")
    if args.model:
        overrides.append(f"models.0.source={args.model}")
        if args.model.rstrip("/").split("/")[-1] and not args.model.startswith("embedded:"):
            overrides.append(f"models.0.name={args.model.rstrip('/').split('/')[-1]}")
    for flag, path in (
        ("policy", "router.policy"),
        ("grpc_port", "router.grpc_port"),
        ("http_port", "router.http_port"),
        ("ray_address", "ray.address"),
    ):
        if getattr(args, flag, None) is not None:
            overrides.append(f"{path}={getattr(args, flag)}")
    return load_config(args.config, overrides)
