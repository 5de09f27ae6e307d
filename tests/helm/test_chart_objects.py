"""The chart's rendered objects: router, secrets, TLS, monitoring, images, command lines, packaging, LoRA adapters."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cluster.config import load_config
from tests.helm.chart_helpers import (
    CASE_IDS,
    CASES,
    CHART,
    CRDS,
    K8S_VERSIONS,
    ROOT,
    crd_validator,
    of_kind,
    render,
    render_with,
    run_helm,
)


# ---- the router ------------------------------------------------------------------------------------
def test_the_router_is_ready_only_with_a_ready_replica_and_exposes_three_ports() -> None:
    docs = render(None)
    (dep,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router")]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "http": 8000, "metrics": 9400}
    (svc,) = [d for d in of_kind(docs, "Service") if d["metadata"]["name"].endswith("-router")]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"grpc": 50051, "http": 8000, "metrics": 9400}
    assert of_kind(docs, "HorizontalPodAutoscaler") and of_kind(docs, "PodDisruptionBudget")


def test_secret_references_reach_the_pods_that_need_them() -> None:
    docs = render(CHART / "examples" / "gpu-multinode.yaml")
    (rc,) = of_kind(docs, "RayCluster")
    head_env = {e["name"]: e for e in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    (router,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router")]
    pod = router["spec"]["template"]["spec"]
    router_env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "HF_TOKEN" not in router_env
    (keys,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert keys["secret"] == {"secretName": "llm-api-keys", "items": [{"key": "keys.yaml", "path": "keys.yaml"}]}
    assert {"name": "api-keys", "mountPath": "/etc/llm-cluster/auth", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    auth = yaml.safe_load(cm["data"]["cluster.yaml"])["router"]["auth"]
    assert auth == {"enabled": True, "key_file": "/etc/llm-cluster/auth/keys.yaml"}  # API keys on in the chart
    (pvc,) = of_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_monitoring_includes_the_project_rules_and_dashboards() -> None:
    docs = render(None)
    rule_files = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
    groups = [g for f in rule_files if "test" not in f.name for g in (yaml.safe_load(f.read_text()) or {}).get("groups", [])]
    rules = of_kind(docs, "PrometheusRule")
    if groups:
        (rule,) = rules
        assert sorted(rule["spec"]["groups"], key=lambda g: g["name"]) == sorted(groups, key=lambda g: g["name"])
        assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    else:
        assert rules == []  # nothing to ship yet: no empty PrometheusRule
    dashboards = sorted(p.name for p in (ROOT / "deploy" / "grafana").glob("*.json"))
    cms = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    if dashboards:
        (cm,) = cms
        assert sorted(cm["data"]) == dashboards
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        for name in dashboards:
            assert json.loads(cm["data"][name]) == json.loads((ROOT / "deploy" / "grafana" / name).read_text())
    else:
        assert cms == []
    assert {d["kind"] for d in docs} >= {"ServiceMonitor", "PodMonitor", "NetworkPolicy"}


def test_the_images_carry_the_ray_version_the_chart_declares() -> None:
    ray_version = yaml.safe_load((CHART / "values.yaml").read_text())["ray"]["rayVersion"]
    for dockerfile in sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*")):
        assert f"ARG RAY_VERSION={ray_version}\n" in dockerfile.read_text(), dockerfile.name


def test_the_images_build_the_routers_native_relay() -> None:
    # Without setup.py (or a compiler) the install succeeds and the router relays in Python: slower, silently.
    for dockerfile in sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*")):
        text = dockerfile.read_text()
        assert re.search(r"^COPY .*\bsetup\.py\b", text, re.M), dockerfile.name
        assert re.search(r"\b(gcc|build-essential)\b", text), dockerfile.name


def test_tls_secrets_are_mounted_and_wired_into_the_config(tmp_path: Path) -> None:
    extra = {
        "secrets": {"tls": {"router": "router-cert", "internal": "cluster-mtls"}},
        "cluster": {"internal_tls": {"server_name": "replica.llm"}},
    }
    out = render_with(tmp_path, extra, CHART / "examples" / "cpu-small.yaml")
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    (tmp_path / "cluster.yaml").write_text(cm["data"]["cluster.yaml"])
    cfg = load_config(tmp_path / "cluster.yaml")
    assert cfg.router.tls.cert_file == "/etc/llm-cluster/tls/router/tls.crt"
    assert (cfg.internal_tls.ca_file, cfg.internal_tls.server_name) == ("/etc/llm-cluster/tls/internal/ca.crt", "replica.llm")
    (router,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router")]
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/llm-cluster/tls/router", "/etc/llm-cluster/tls/internal"} <= mounts
    (rc,) = of_kind(docs, "RayCluster")
    pods = [rc["spec"]["headGroupSpec"]["template"], *(g["template"] for g in rc["spec"]["workerGroupSpecs"])]
    for pod in pods:
        assert "/etc/llm-cluster/tls/internal" in {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    for doc in docs:
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        else:
            assert not list(crd_validator(doc["kind"]).iter_errors(doc))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_containers_command_lines_parse_with_the_real_cli(case: Path | None) -> None:
    from cluster.cli import build_parser

    docs = render(case)
    commands = [
        c["args"]
        for d in of_kind(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c.get("args", [None])[0] == "llm-cluster"
    ]
    assert any(a[1] == "router" for a in commands)
    for args in commands:
        parsed = build_parser().parse_args(args[1:])  # argparse exits (SystemExit) on an unknown flag
        assert parsed.config == "/etc/llm-cluster/config/cluster.yaml"


def test_replica_metrics_are_scraped_on_their_fixed_ports() -> None:
    docs = render(CHART / "examples" / "gpu-multinode.yaml")
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    assert yaml.safe_load(cm["data"]["cluster.yaml"])["controller"]["replica_metrics_port"] == 9500
    (pm,) = [d for d in of_kind(docs, "PodMonitor") if d["metadata"]["name"].endswith("-replicas")]
    assert [e["portNumber"] for e in pm["spec"]["podMetricsEndpoints"]] == [9500, 9501]


def test_the_packaged_chart_carries_the_rules_and_dashboards(tmp_path: Path) -> None:
    # files/prometheus and files/grafana are links to deploy/; `helm package` must copy what they point to.
    out = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (tgz,) = tmp_path.glob("llm-cluster-*.tgz")
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    assert {"llm-cluster/files/prometheus/rules.yml", "llm-cluster/files/prometheus/alerts.yml"} <= names
    assert "llm-cluster/files/grafana/llm-cluster.json" in names
    assert "llm-cluster/files/prometheus/tests.yml" not in names
    rendered = run_helm("template", "llm", str(tgz))
    assert rendered.returncode == 0, rendered.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d]
    assert "PrometheusRule" in kinds


# ---- router workers -----------------------------------------------------------------------------
def _router_args(docs: list[dict[str, Any]]) -> list[str]:
    [dep] = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-router")]
    [c] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "router"]
    return c["args"]


@pytest.mark.parametrize(("cpu", "workers"), [("2", 2), ("500m", 1), ("1500m", 2), ("4", 4)])
def test_the_router_runs_one_worker_per_core_of_its_cpu_limit(tmp_path: Path, cpu: str, workers: int) -> None:
    out = render_with(tmp_path, {"router": {"resources": {"limits": {"cpu": cpu, "memory": "2Gi"}}}})
    assert out.returncode == 0, out.stderr
    args = _router_args([d for d in yaml.safe_load_all(out.stdout) if d])
    assert f"router.workers={workers}" in args
    # ... and the value it sets is one the router's config accepts.
    assert load_config(overrides=[f"router.workers={workers}"]).router.workers == workers


def test_an_explicit_router_workers_setting_wins_over_the_cpu_limit(tmp_path: Path) -> None:
    out = render_with(tmp_path, {"cluster": {"router": {"workers": 3}}})
    assert out.returncode == 0, out.stderr
    assert "router.workers=3" in _router_args([d for d in yaml.safe_load_all(out.stdout) if d])


def test_lora_adapters_reach_every_ray_pod_from_an_init_container_or_a_pvc(tmp_path: Path) -> None:
    case = CHART / "examples" / "multi-model.yaml"
    (ray,) = of_kind(render(case), "RayCluster")
    pods = [ray["spec"]["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in ray["spec"]["workerGroupSpecs"]]
    for pod in pods:
        (init,) = pod["initContainers"]
        assert init["volumeMounts"] == [{"name": "lora-adapters", "mountPath": "/adapters"}]
        assert {"name": "lora-adapters", "mountPath": "/adapters", "readOnly": True} in pod["containers"][0]["volumeMounts"]
        assert {"name": "lora-adapters", "emptyDir": {}} in pod["volumes"]
    out = render_with(tmp_path, {"loraAdapters": {"pvc": {"existingClaim": "adapters"}}}, case)
    assert out.returncode == 0, out.stderr
    (ray,) = of_kind([d for d in yaml.safe_load_all(out.stdout) if d], "RayCluster")
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]
    assert "initContainers" not in head
    assert {"name": "lora-adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in head["volumes"]
