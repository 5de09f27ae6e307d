"""What the chart tests share: the chart and its example values, Helm, rendering, and the Kubernetes and CRD schemas."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "llm-cluster"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
CASES = [None, *EXAMPLES]
CASE_IDS = ["defaults", *(p.stem for p in EXAMPLES)]
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
K8S_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version() + ".0"]
# kind -> (CRD file under the shared schemas folder, served version)
CRDS = {
    "RayCluster": ("kuberay/ray.io_rayclusters.yaml", "v1"),
    "ServiceMonitor": ("prometheus-operator/monitoring.coreos.com_servicemonitors.yaml", "v1"),
    "PodMonitor": ("prometheus-operator/monitoring.coreos.com_podmonitors.yaml", "v1"),
    "PrometheusRule": ("prometheus-operator/monitoring.coreos.com_prometheusrules.yaml", "v1"),
    "ScaledObject": ("keda/keda.sh_scaledobjects.yaml", "v1alpha1"),
}


def shared_schemas() -> Path:
    """../shared/schemas beside the checkout (a worktree's parent holds `shared` too), else /work/shared."""
    for base in (ROOT.parent / "shared", Path("/work/shared")):
        if (base / "schemas").is_dir():
            return base / "schemas"
    pytest.fail("CRD schemas not found: expected ../shared/schemas beside the repository (see its README)")


@functools.cache
def helm() -> str:
    binary = ROOT / ".tools" / "bin" / "helm"
    if not binary.exists():
        subprocess.run([str(ROOT / "tools" / "fetch_helm.sh")], check=True, env=os.environ | {"PYTHON": sys.executable})
    return str(binary)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def values_args(case: Path | None, extra: dict[str, Any] | None, tmp: Path | None = None) -> list[str]:
    args = ["-f", str(case)] if case else []
    if extra is not None:
        assert tmp is not None
        path = tmp / "extra-values.yaml"
        path.write_text(yaml.safe_dump(extra))
        args += ["-f", str(path)]
    return args


@functools.cache
def render(case: Path | None) -> list[dict[str, Any]]:
    out = run_helm("template", "llm", str(CHART), "--namespace", "serving", *values_args(case, None))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_with(tmp_path: Path, extra: dict[str, Any], case: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_helm("template", "llm", str(CHART), "--namespace", "serving", *values_args(case, extra, tmp_path))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as the API server's strict field validation does (the CRDs only prune them)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    path, version = CRDS[kind]
    crd = yaml.safe_load((shared_schemas() / path).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(entry["schema"]["openAPIV3Schema"]))
