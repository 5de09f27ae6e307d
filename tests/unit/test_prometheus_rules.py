"""deploy/prometheus: the rules and alerts are valid and behave as their unit tests say (promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `make prometheus-bin` installs the Debian package prometheus")
    return path


def test_recording_rules_and_alerts_pass_promtool_check(promtool):
    out = subprocess.run([promtool, "check", "rules", "rules.yml", "alerts.yml"], cwd=DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_and_alerts_fire_as_their_promtool_unit_tests_expect(promtool):
    out = subprocess.run([promtool, "test", "rules", "tests.yml"], cwd=DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_the_autoscaler_default_queries_match_the_recorded_expressions():
    """rules.yml documents the autoscaler's queries as recording rules; they must not drift apart."""
    import yaml

    from cluster.autoscaler.sources.prometheus import DEFAULT_QUERIES

    groups = yaml.safe_load((DIR / "rules.yml").read_text())["groups"]
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    assert "vllm:num_requests_running + vllm:num_requests_waiting" in recorded["llm_cluster:replica_load:sum"]
    assert "vllm:num_requests_running" in DEFAULT_QUERIES["load"] and "vllm:num_requests_waiting" in DEFAULT_QUERIES["load"]
    assert "llm_cluster_router_waiting_for_replica" in recorded["llm_cluster:waiting_for_replica:sum"]
    assert "llm_cluster_router_waiting_for_replica" in DEFAULT_QUERIES["demand"]
