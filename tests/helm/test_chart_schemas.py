"""The chart against its schemas: `helm lint --strict`, Kubernetes and CRD validation, values.schema.json, bad values."""

from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from cluster.router.policies import POLICIES
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
    values_args,
)


# ---- lint and schemas ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_chart_lints_strictly(case: Path | None) -> None:
    out = run_helm("lint", "--strict", str(CHART), *values_args(case, None))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_builtin_kind_validates_against_the_kubernetes_schemas(case: Path | None) -> None:
    builtin = [d for d in render(case) if d["kind"] not in CRDS]
    assert {"Deployment", "Service", "ConfigMap"} <= {d["kind"] for d in builtin}
    for doc in builtin:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {path}: {exc.message}")


def test_the_builtin_check_catches_a_misspelt_field() -> None:
    (dep,) = [d for d in of_kind(render(None), "Deployment") if d["metadata"]["name"].endswith("-router")]
    dep = copy.deepcopy(dep)
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo of readinessProbe
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_custom_resource_validates_against_its_crd(case: Path | None) -> None:
    customs = [d for d in render(case) if d["kind"] in CRDS]
    assert "RayCluster" in {d["kind"] for d in customs}
    for doc in customs:
        group_version = doc["apiVersion"]
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        detail = "; ".join(f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors[:5])
        assert not errors, f"{doc['kind']} ({group_version}) {doc['metadata']['name']}: {detail}"


def test_the_crd_check_catches_a_misspelt_field() -> None:
    doc = copy.deepcopy(of_kind(render(None), "RayCluster")[0])
    doc["spec"]["workerGroupSpecs"][0]["replica"] = 3  # typo of `replicas`
    assert any("replica" in e.message for e in crd_validator("RayCluster").iter_errors(doc))


def test_the_values_schema_is_generated_from_the_config_model() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_helm_schema
    finally:
        sys.path.pop(0)
    committed = (CHART / "values.schema.json").read_text()
    assert committed == gen_helm_schema.render(), "values.schema.json is stale: run `make helm-schema` and commit it"


# ---- bad values -------------------------------------------------------------------------------------------
GPU_GROUP = {"name": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 2, "gpus": 8}
GPU_MODEL = {"name": "big", "source": "org/big", "tensor_parallel_size": 3, "num_gpus_per_shard": 1}
BAD_VALUES = {
    "negative model replicas": (
        {"cluster": {"models": [{"name": "m", "source": "org/m", "replicas": -1}]}},
        r"at '/cluster/models/0/replicas': minimum: got -1, want 0",
    ),
    "negative worker replicas": (
        {"ray": {"workerGroups": [{**GPU_GROUP, "replicas": -2}]}},
        r"at '/ray/workerGroups/0/replicas': minimum: got -2, want 0",
    ),
    "negative router replicas": ({"router": {"replicas": -1}}, r"at '/router/replicas': minimum: got -1, want 1"),
    "no model at all": ({"cluster": {"models": []}}, r"at '/cluster/models': minItems: got 0, want 1"),
    "model without a source": ({"cluster": {"models": [{"name": "m"}]}}, r"at '/cluster/models/0': missing property 'source'"),
    "tensor parallel size not dividing the group's GPUs": (
        {"cluster": {"models": [GPU_MODEL]}, "ray": {"workerGroups": [GPU_GROUP]}},
        r'model "big": tensor_parallel_size 3 does not divide the 8 GPUs of worker group "gpu"',
    ),
    "unknown routing policy": (
        {"cluster": {"router": {"policy": "fastest"}}},
        r"at '/cluster/router/policy': value must be one of " + re.escape(", ".join(f"'{p}'" for p in POLICIES)),
    ),
    "unknown config field": ({"cluster": {"router": {"polcy": "round_robin"}}}, r"additional properties 'polcy' not allowed"),
    "replicas outside the worker group bounds": (
        {"ray": {"workerGroups": [{**GPU_GROUP, "replicas": 5}]}},
        r"ray.workerGroups\[gpu\]: replicas 5 must lie within minReplicas..maxReplicas = 0..2",
    ),
    "both autoscalers": ({"keda": {"enabled": True}}, r"autoscaler.enabled and keda.enabled are both true"),
    "autoscaler scaling an unknown model": ({"autoscaler": {"model": "nope"}}, r'autoscaler.model: unknown model "nope"'),
    "autoscaler bounds outside the worker group's": (
        {
            "ray": {"workerGroups": [GPU_GROUP]},
            "autoscaler": {"policy": {"maxReplicas": 5}, "actuator": {"kind": "kubernetes", "target": {"kind": "RayCluster"}}},
        },
        r'autoscaler.policy: minReplicas..maxReplicas = 1..5 must lie within worker group "gpu"\'s minReplicas..maxReplicas = 0..2',
    ),
    "deployment target without a name": (
        {"autoscaler": {"actuator": {"kind": "kubernetes", "target": {"kind": "Deployment"}}}},
        r"autoscaler.actuator.target.name is required for a Deployment or StatefulSet target",
    ),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_are_rejected_with_a_clear_message(name: str, tmp_path: Path) -> None:
    extra, message = BAD_VALUES[name]
    out = render_with(tmp_path, extra)
    assert out.returncode != 0, f"rendered although {name}"

    assert re.search(message, out.stderr), f"{name}: expected /{message}/ in:\n{out.stderr}"
    # `helm lint` fails on schema errors; a template's `fail` it only reports (Helm's lint mode logs it as
    # "[INFO] Fail: ..."), while `helm install` / `template` stop on both, as checked above.
    lint = run_helm("lint", "--strict", str(CHART), *values_args(None, extra, tmp_path))
    if "values don't meet the specifications" in out.stderr:
        assert lint.returncode != 0, shlex.join(lint.args)
    else:
        assert re.search(message, lint.stdout + lint.stderr), shlex.join(lint.args)


def test_a_tensor_parallel_size_that_divides_every_gpu_group_renders(tmp_path: Path) -> None:
    ok = {"cluster": {"models": [{**GPU_MODEL, "tensor_parallel_size": 4}]}, "ray": {"workerGroups": [GPU_GROUP]}}
    out = render_with(tmp_path, ok)
    assert out.returncode == 0, out.stderr
