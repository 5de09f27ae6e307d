"""The Helm chart (deploy/helm/llm-cluster), checked offline with the real Helm binary.

For the default values and every example values file: `helm lint --strict`; `helm template`, then every built-in
kind validated strictly against the Kubernetes schemas of the `kubernetes-validate` package and every custom
resource against its upstream CRD schema (../shared/schemas); the rendered cluster.yaml loaded with the code's own
`load_config`; the autoscaler's Role compared with what its Kubernetes actuator calls.  Bad values must fail with a
message that names the mistake.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.autoscaler.actuators.kubernetes import RBAC_RULES, KubernetesTarget, rbac_rules
from cluster.config import load_config
from cluster.router.policies import POLICIES

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
