"""deploy/grafana: the dashboard is current with its generator, and every query is valid PromQL over our metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "llm-cluster.json"


def exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_the_committed_dashboard_is_what_the_generator_writes():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_dashboard
    finally:
        sys.path.pop(0)
    assert DASHBOARD.read_text() == gen_dashboard.render(), "run `python tools/gen_dashboard.py`"


def test_every_panel_query_is_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: `make prometheus-bin` installs the Debian package prometheus")
    # Grafana's variables, as Grafana would substitute them; then promtool parses each as a recording rule.
    rules = [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "1m").replace("$model", ".*")} for i, e in enumerate(exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_only_queries_metrics_the_cluster_exports():
    from cluster.router import metrics as router_metrics

    exported = {m.name for m in router_metrics.RouterMetrics().registry.collect()} | {
        "llm_cluster_controller_desired_replicas",
        "llm_cluster_controller_ready_replicas",
    }
    from cluster.autoscaler.loop import AutoscalerMetrics
    from cluster.replica.metrics import ReplicaMetrics

    exported |= {m.name for m in AutoscalerMetrics().registry.collect()}
    exported |= {m.name for m in ReplicaMetrics("m", "r").registry.collect()}
    from cluster.metrics_server import PROCESS_REGISTRY

    exported |= {m.name for m in PROCESS_REGISTRY.collect()}  # on every process's page
    exported |= {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
    exported |= {"vllm:prefix_cache_queries", "vllm:prefix_cache_hits"}
    used = {re.sub(r"_(total|bucket|count|sum)$", "", n) for e in exprs() for n in re.findall(r"(?:vllm:|llm_cluster_)[a-z0-9_:]+", e)}
    assert used - exported == set()
    # Each question the issue names has a panel.
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    for want in ("Requests / s by status", "Time to first token", "Inter-token latency", "Where requests wait"):
        assert want in titles
    assert {"KV-cache usage per replica", "Replicas: desired vs ready", "Autoscaler decisions (changes) by reason"} <= titles
