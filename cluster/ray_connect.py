"""Starting, joining and finding this machine's Ray cluster and its controller, the same way from every command.

``llm-cluster up`` starts (or joins) a local Ray head; ``status``, ``down``, ``autoscaler``, ``router`` and the
router actor join it and find the controller, all through :func:`join` and :func:`find_controller`.  What Ray's
own ``ray.init(address="auto")`` gets wrong for us is handled here, once:

- a stale record of a cluster that is gone: probed first, so a command fails at once with one line
  (:class:`NoCluster`) instead of retrying a dead GCS for minutes;
- a loopback head: Ray swaps 127.0.0.1 for the machine's outward address unless multi-node clustering is off in
  every process that touches the cluster; :func:`prepare_env` turns it off in this process (even when Ray is
  imported already) and in everything it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cluster.config import ClusterConfig, RayConfig

#: Environment variable carried by every process of a cluster `up` started (its Ray head, workers, engines);
#: its value names the cluster (see :func:`owner_tag`), so `down` stops exactly those.
ENV_MARKER = "LLM_CLUSTER_OWNED"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Ray's switch for multi-node clustering; "0" keeps a node on the address it is given.
_RAY_CLUSTERS_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class NoCluster(ConnectionError):
    """No cluster (or no controller) to join; the message is one line for the user."""


def owner_tag() -> str:
    """What ``ENV_MARKER`` holds for this machine's local cluster: the Ray temp root it records itself in.

    Two local clusters cannot share a Ray temp root (Ray's "current cluster" record lives there), so the root
    tells one user's cluster from another's on a shared machine.
    """
    return str(Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()).resolve())


def is_local(address: str | None) -> bool:
    """Whether ``address`` (a config's ``ray.address``) means this machine's cluster."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local"):
        return True
    return address.rpartition(":")[0] in _LOOPBACK


def prepare_env(address: str | None = None, node_ip: str = "127.0.0.1") -> None:
    """Set up this process (and what it starts) for Ray; call before joining.

    A local cluster on loopback stays there: ``ray start --node-ip-address=127.0.0.1`` alone is not enough,
    Ray swaps a loopback address for the machine's outward-facing one unless multi-node clustering is off for
    the head, its workers and every driver that joins it.  Ray reads that switch when it is first imported,
    so where it was imported already the switch is set on the loaded module too.  Not for a remote cluster:
    a driver joining a remote head must advertise a reachable address.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not (is_local(address) and node_ip in _LOOPBACK):
        return
    os.environ.setdefault(_RAY_CLUSTERS_VAR, "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = os.environ[_RAY_CLUSTERS_VAR].lower() in ("1", "true")


def _answers(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def local_ray_address() -> str | None:
    """The address of this machine's running Ray cluster, or None when there is none that answers.

    What Ray's ``address="auto"`` would pick (``RAY_ADDRESS``, else the cluster recorded in Ray's temp dir),
    probed first: after a crash or a test run the record can name a cluster that is gone.  Callers still
    connect with ``address="auto"``: Ray 2.60 refuses an explicit local address of a token-authenticated head
    that "auto" joins fine.
    """
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        try:
            from ray._private.services import find_bootstrap_address

            address = find_bootstrap_address(None)
        except Exception:  # a Ray without that helper: read the record ourselves
            record = Path(owner_tag()) / "ray" / "ray_current_cluster"
            address = record.read_text().strip() if record.exists() else None
    if not address or address == "auto":
        return None
    return address if _answers(address) else None


def start_head(ray_cfg: RayConfig, attempts: int = 3) -> None:
    """Start a local Ray head (``ray start --head``), its processes marked with ``ENV_MARKER``.

    On a loaded machine a fresh head can miss Ray's own start-up deadline ("The current node timed out during
    startup"): what it had started is stopped and it is started again, ``attempts`` times in all.
    """
    prepare_env(None, ray_cfg.node_ip_address)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--disable-usage-stats", "--include-dashboard=false"]
    cmd.append(f"--node-ip-address={ray_cfg.node_ip_address}")
    if ray_cfg.num_cpus is not None:
        cmd.append(f"--num-cpus={ray_cfg.num_cpus}")
    # Ray starts its workers at nice 15 by default: a replica's engine (an actor's child) would then get a
    # 28th of a core against any ordinary process on its core (`vllm serve` runs at 0).  RAY_worker_niceness
    # in the environment of `up` still wins.
    env = {"RAY_worker_niceness": "0"} | os.environ | {ENV_MARKER: owner_tag()}
    for attempt in range(1, attempts + 1):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode == 0:
            return
        stop_local_processes(grace_s=2.0)
        if attempt == attempts or "timed out during startup" not in out.stderr:
            raise NoCluster(f"ray start failed:\n{out.stderr[-2000:]}")
        print(f"ray start missed Ray's start-up deadline (attempt {attempt} of {attempts}); starting it again", file=sys.stderr)


def stop_local_processes(grace_s: float = 0.0) -> int:
    """End the processes of the cluster `up` started here (``ENV_MARKER`` is :func:`owner_tag`) and their
    descendants: SIGTERM, then SIGKILL after ``grace_s``.  Returns how many there were.

    Descendants count because the marker cannot always be read back: Ray's dashboard and runtime-env agents
    (children of the raylet) rewrite their process title over their environment, so theirs reads empty; they
    ignore SIGTERM and, once the raylet is gone, linger for minutes as orphans nothing could find."""
    import psutil

    owner, me = owner_tag(), os.getpid()
    ours: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if p.environ().get(ENV_MARKER) == owner:
                ours[p.pid] = p
                ours.update((c.pid, c) for c in p.children(recursive=True) if c.pid != me)
    for p in ours.values():
        with contextlib.suppress(psutil.Error):
            p.terminate() if grace_s > 0 else p.kill()
    _, alive = psutil.wait_procs(list(ours.values()), timeout=grace_s or 1.0)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(ours)


def join(ray_cfg: RayConfig, *, start: bool = False) -> None:
    """Join ``ray.address``, else this machine's cluster (started first when ``start``); NoCluster when none."""
    prepare_env(ray_cfg.address, ray_cfg.node_ip_address)
    import ray

    if ray.is_initialized():
        return
    address = ray_cfg.address
    if address is None and local_ray_address() is None:
        if not start:
            raise NoCluster("no running cluster found on this machine (start one with `llm-cluster up`)")
        start_head(ray_cfg)
    elif address is not None and "://" not in address and not _answers(address, timeout_s=3.0):
        raise NoCluster(f"no Ray cluster answers at {address} (ray.address)")
    if address is None:
        # Two warnings ray.init("auto") prints on every local join, neither one the user can act on: "multiple
        # active Ray instances" (other clusters on a shared machine; the one this machine's record names, probed
        # above, is joined) and "token authentication is enabled" (Ray's default).
        for name in ("ray._private.services", "ray._private.authentication.authentication_token_setup"):
            logging.getLogger(name).setLevel(logging.ERROR)
    ray.init(address=address or "auto", namespace=ray_cfg.namespace, logging_level="WARNING", log_to_driver=False)


def find_controller(cfg: ClusterConfig, *, create: bool = False, start: bool = False) -> Any:
    """Join the cluster (see :func:`join`) and return its controller's handle.

    ``create``: create the controller from ``cfg`` when none runs yet (``up``, the Helm chart's routers);
    otherwise NoCluster when there is none.
    """
    join(cfg.ray, start=start)
    import ray

    from cluster.controller import CONTROLLER_NAME, get_or_create_controller

    if create:
        return get_or_create_controller(cfg)
    try:
        return ray.get_actor(CONTROLLER_NAME)
    except ValueError:
        raise NoCluster(
            f"no controller {CONTROLLER_NAME!r} in Ray namespace {cfg.ray.namespace!r} (start one with `llm-cluster up`)"
        ) from None
