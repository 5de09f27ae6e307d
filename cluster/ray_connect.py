"""Finding and joining this machine's Ray cluster, the same way from every command.

``llm-cluster up`` starts (or joins) a local Ray head; ``status``, ``down``, ``autoscaler`` and the router's
``--create-controller`` join it.  Two things Ray's own ``address="auto"`` gets wrong for us are handled here:
a stale record of a cluster that is gone (probe it first), and a loopback head (keep every process on
127.0.0.1, so a single-machine cluster's traffic never leaves loopback).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def local_ray_address() -> str | None:
    """The address of this machine's running Ray cluster, or None when there is none that answers.

    What Ray's ``address="auto"`` would pick (``RAY_ADDRESS``, else the cluster recorded in Ray's temp dir),
    probed first: after a crash or a test run the record can name a cluster that is gone, and ``ray.init``
    would then wait minutes for its GCS instead of us starting a new head.  Callers still connect with
    ``address="auto"``: Ray 2.60 refuses an explicit local address of a token-authenticated head that "auto"
    joins fine.
    """
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        try:
            from ray._private.services import find_bootstrap_address

            address = find_bootstrap_address(None)
        except Exception:  # a Ray without that helper: read the record ourselves
            record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
            address = record.read_text().strip() if record.exists() else None
    if not address or address == "auto":
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None


def keep_ray_on_loopback(address: str | None, node_ip: str = "127.0.0.1") -> None:
    """A local cluster on 127.0.0.1 stays there.

    ``ray start --node-ip-address=127.0.0.1`` alone is not enough: Ray swaps a loopback address for the
    machine's outward-facing one unless multi-node clustering is off for the head, its workers and every
    driver that joins it (all of which inherit this process's environment).  Only when no remote cluster
    is named: a driver joining a remote head must advertise a reachable address.
    """
    if address is None and not os.environ.get("RAY_ADDRESS") and node_ip in ("127.0.0.1", "localhost", "::1"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def init_ray(address: str | None, namespace: str, node_ip: str = "127.0.0.1") -> None:
    """Join ``address``, or the local cluster when it is None (ConnectionError when there is none)."""
    keep_ray_on_loopback(address, node_ip)
    import ray

    if ray.is_initialized():
        return
    if address is None and local_ray_address() is None:
        raise ConnectionError("no running Ray cluster on this machine (start one with `llm-cluster up`)")
    ray.init(address=address or "auto", namespace=namespace, logging_level="WARNING", log_to_driver=False)
