"""``llm-cluster lora load|unload|list``: LoRA adapters on a running cluster, through its router's admin API.

The commands call the routes vLLM serves (``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``) and
``GET /v1/models`` on the router (``--url``, default the local quick start's), with ``--api-key`` (or
``LLM_CLUSTER_API_KEY``) when auth is on: loading and unloading need an admin tenant's key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    headers = {"content-type": "application/json"}
    key = args.api_key or os.environ.get("LLM_CLUSTER_API_KEY")
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, f"cannot reach the router at {args.url}: {exc}"


def _report(status: int, text: str) -> int:
    if 200 <= status < 300:
        print(text)
        return 0
    try:
        text = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    print(f"error ({status or 'no answer'}): {text}", file=sys.stderr)
    return 1


def cmd_load(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"lora_name": args.name, "lora_path": os.path.abspath(os.path.expanduser(args.path))}
    if args.model:
        body["model"] = args.model
    return _report(*_call(args, "POST", "/v1/load_lora_adapter", body))


def cmd_unload(args: argparse.Namespace) -> int:
    return _report(*_call(args, "POST", "/v1/unload_lora_adapter", {"lora_name": args.name}))


def cmd_list(args: argparse.Namespace) -> int:
    status, text = _call(args, "GET", "/v1/models")
    if status != 200:
        return _report(status, text)
    for m in json.loads(text)["data"]:
        if m.get("parent"):
            print(f"{m['id']}\t{m['parent']}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``lora`` and its subcommands on the CLI's subparsers."""
    p = sub.add_parser("lora", help="load, unload and list LoRA adapters on a running cluster")
    lsub = p.add_subparsers(dest="lora_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--url", default=DEFAULT_URL, help=f"the router's HTTP address (default {DEFAULT_URL})")
        q.add_argument("--api-key", default=None, help="an admin key when auth is on (default: $LLM_CLUSTER_API_KEY)")
        q.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer (a load reads the adapter)")

    q = lsub.add_parser("load", help="load an adapter on every replica of its base model")
    q.add_argument("name", help="the name clients will put in `model`")
    q.add_argument("path", help="the peft adapter directory (on every node that runs the base model)")
    q.add_argument("--model", default=None, help="the base model (needed when several models have LoRA on)")
    common(q)
    q.set_defaults(func=cmd_load)
    q = lsub.add_parser("unload", help="unload an adapter everywhere")
    q.add_argument("name")
    common(q)
    q.set_defaults(func=cmd_unload)
    q = lsub.add_parser("list", help="the adapters served, each with its base model")
    common(q)
    q.set_defaults(func=cmd_list)
