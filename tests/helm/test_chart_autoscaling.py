"""The chart's rendered cluster config and scaling: the config loads with the code, autoscaler RBAC, KEDA mode."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.autoscaler.actuators.kubernetes import RBAC_RULES, KubernetesTarget, rbac_rules
from cluster.config import load_config
from tests.helm.chart_helpers import (
    CASE_IDS,
    CASES,
    CHART,
    EXAMPLES,
    ROOT,
    of_kind,
    render,
    render_with,
)


# ---- the rendered cluster config is one the code accepts ----------------------------------------------
def _autoscaler_overrides(docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    deployments = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-autoscaler")]
    if not deployments:
        return [], {}
    args = deployments[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["llm-cluster", "autoscaler"]
    overrides = [a.removeprefix("--set=") for a in args if a.startswith("--set=")]
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[2:] if not a.startswith("--set="))
    return overrides, flags


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_rendered_cluster_config_loads_with_the_code(case: Path | None, tmp_path: Path) -> None:
    docs = render(case)
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    path = tmp_path / "cluster.yaml"
    path.write_text(cm["data"]["cluster.yaml"])
    cfg = load_config(path)
    values = yaml.safe_load(case.read_text()) if case else {}
    expected_models = [m["name"] for m in (values.get("cluster", {}).get("models") or [{"name": "smollm2-135m-instruct"}])]
    assert [m.name for m in cfg.models] == expected_models
    assert cfg.ray.address == "ray://llm-llm-cluster-head-svc:10001"
    assert cfg.router.host == "0.0.0.0"

    overrides, flags = _autoscaler_overrides(docs)
    if not overrides:
        return
    assert flags["model"] in expected_models
    if "autoscaler" in type(cfg).model_fields:
        load_config(path, overrides)  # the autoscaler's --set flags are valid config too
    target = next((o.split("=", 1)[1] for o in overrides if o.startswith("autoscaler.actuator.kubernetes=")), None)
    if target is not None:
        KubernetesTarget.model_validate(yaml.safe_load(target))


# ---- RBAC: exactly what the actuator calls --------------------------------------------------------------
TARGETS = {
    "RayCluster": {"autoscaler": {"actuator": {"kind": "kubernetes", "target": {"kind": "RayCluster", "workerGroup": "cpu"}}}},
    "Deployment": {"autoscaler": {"actuator": {"kind": "kubernetes", "target": {"kind": "Deployment", "name": "engine"}}}},
    "StatefulSet": {"autoscaler": {"actuator": {"kind": "kubernetes", "target": {"kind": "StatefulSet", "name": "engine"}}}},
}


def test_the_autoscaler_role_grants_exactly_what_the_actuator_calls(tmp_path: Path) -> None:
    union: list[dict[str, Any]] = []
    for kind, extra in TARGETS.items():
        out = render_with(tmp_path, extra)
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        (role,) = of_kind(docs, "Role")
        (binding,) = of_kind(docs, "RoleBinding")
        overrides, _ = _autoscaler_overrides(docs)
        target = KubernetesTarget.model_validate(
            yaml.safe_load(next(o.split("=", 1)[1] for o in overrides if o.startswith("autoscaler.actuator.kubernetes=")))
        )
        assert target.kind == kind
        assert target.namespace == "serving"
        rules = copy.deepcopy(role["rules"])
        for rule in rules:
            assert rule.pop("resourceNames") == [target.name]  # this one object only
        assert rules == rbac_rules(kind)
        union += rules
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        (sa,) = of_kind(docs, "ServiceAccount")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "serving"}]
    assert sorted(union, key=json.dumps) == sorted(RBAC_RULES, key=json.dumps)


def test_the_ray_actuator_gets_no_kubernetes_permissions() -> None:
    docs = render(EXAMPLES[[p.stem for p in EXAMPLES].index("cpu-small")])
    assert of_kind(docs, "Role") == [] and of_kind(docs, "RoleBinding") == []
    (sa,) = of_kind(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_the_gpu_example_scales_its_own_raycluster_worker_group() -> None:
    docs = render(CHART / "examples" / "gpu-multinode.yaml")
    (role,) = of_kind(docs, "Role")
    (rc,) = of_kind(docs, "RayCluster")
    assert role["rules"][0]["resourceNames"] == [rc["metadata"]["name"]]
    (group,) = rc["spec"]["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert group["rayStartParams"]["num-gpus"] == "8"


def test_keda_mode_scales_a_worker_statefulset_on_the_autoscalers_promql() -> None:
    docs = render(CHART / "examples" / "keda.yaml")
    (so,) = of_kind(docs, "ScaledObject")
    (sts,) = of_kind(docs, "StatefulSet")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]}
    assert so["spec"]["triggers"][0]["metadata"]["query"] == (
        '(sum(llm_cluster:replica_load:sum{model="qwen2.5-7b-instruct"}) or vector(0))'
        ' + sum(llm_cluster:waiting_for_replica:sum{model="qwen2.5-7b-instruct"})'
    )
    recorded = {r.get("record") for g in yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"] for r in g["rules"]}
    assert {"llm_cluster:replica_load:sum", "llm_cluster:waiting_for_replica:sum"} <= recorded  # the series KEDA reads exist
    assert not [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-autoscaler")]
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    assert "ray start --address=llm-llm-cluster-head-svc:6379 --block" in worker["args"][0]
    (rc,) = of_kind(docs, "RayCluster")
    assert "gpu" not in [g["groupName"] for g in rc["spec"].get("workerGroupSpecs", [])]
