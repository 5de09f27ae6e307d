"""The chart's router command brings a cluster up from nothing.

In Kubernetes nobody runs `llm-cluster up`: KubeRay starts a bare Ray cluster and the routers start with
`llm-cluster router --config cluster.yaml --create-controller` (deploy/helm/llm-cluster/templates/router.yaml).
Here the same command runs as a real process against a real (local) Ray cluster: it must create the controller,
which starts the replicas, and the router's readiness (`GET /readyz`, the chart's readinessProbe) must turn 200
only once a replica serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import requests
import yaml

from cluster.controller import CONTROLLER_NAME
from tests.conftest import free_port, start_ray_cluster

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "llm-cluster-helm-bootstrap"


@pytest.mark.slow
@pytest.mark.ray
def test_the_charts_router_command_creates_the_controller_and_turns_ready(tmp_path: Path) -> None:
    head, _ = start_ray_cluster({"num_cpus": 2}, [])
    http = free_port()
    cfg = {
        "models": [{"name": "sim", "engine": "sim", "replicas": 1, "engine_args": {"time_scale": 0.05}}],
        "router": {"host": "127.0.0.1", "grpc_port": free_port(), "http_port": http, "metrics_port": 0},
        "controller": {"metrics_port": 0, "health_check_interval_s": 0.5},
        "ray": {"address": head.address, "namespace": NAMESPACE},
    }
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "cluster.cli", "router", "--config", str(tmp_path / "cluster.yaml"), "--create-controller"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        statuses: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"router exited: {proc.stdout.read() if proc.stdout else ''}"
            try:
                r = requests.get(f"http://127.0.0.1:{http}/readyz", timeout=2)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        assert statuses and statuses[-1] == 200, f"never ready: {statuses[-5:]}"
        assert set(statuses) <= {200, 503}
        assert r.json()["ready_replicas"] >= 1
        models = requests.get(f"http://127.0.0.1:{http}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["sim"]
        # The controller the router created is the detached, named one the rest of the system looks up.
        ray.init(address=head.address, namespace=NAMESPACE, logging_level="WARNING")
        status = ray.get(ray.get_actor(CONTROLLER_NAME).status.remote(), timeout=30)
        assert status["models"]["sim"]["ready"] == 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if ray.is_initialized():
            try:
                ray.get(ray.get_actor(CONTROLLER_NAME).shutdown.remote(), timeout=60)
            except Exception:
                pass
            ray.shutdown()
        head.shutdown()
