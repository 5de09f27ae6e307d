"""The Kubernetes actuator against kmock: a real HTTP server on loopback speaking the Kubernetes API.

The actuator is configured exactly as in production from a kubeconfig file (pointing at the mock server), and the
tests check what reaches the wire: method, path, content type and body of every call, and how API errors are
handled (404 / 403 fail fast with a clear message; 409 / 429 / 5xx are retried, then given up on).
"""

from __future__ import annotations

from pathlib import Path

import kmock
import pytest
import yaml

from cluster.autoscaler.actuators import ActuatorError
from cluster.autoscaler.actuators.kubernetes import RBAC_RULES, KubernetesActuator, KubernetesTarget, rbac_rules

NS = "serving"
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
RAYCLUSTERS = kmock.resource("ray.io", "v1", "rayclusters")
SCALE_PATHS = {
    "Deployment": f"/apis/apps/v1/namespaces/{NS}/deployments/web/scale",
    "StatefulSet": f"/apis/apps/v1/namespaces/{NS}/statefulsets/web/scale",
}
RC_PATH = f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/llm"


@pytest.fixture
def kubeconfig(tmp_path: Path, kmock: kmock.KubernetesEmulator) -> str:
    """A kubeconfig whose current context points at the mock API server, namespace `serving`."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "tester", "namespace": NS}}],
        "current-context": "mock",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def actuator(kubeconfig: str, **kw: object) -> KubernetesActuator:
    opts: dict[str, object] = {"kind": "Deployment", "name": "web", "kubeconfig": kubeconfig, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    opts.update(kw)
    return KubernetesActuator(KubernetesTarget.model_validate(opts))


def raycluster(replicas: int = 1) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "llm", "namespace": NS},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}},
            "workerGroupSpecs": [
                {"groupName": "cpu", "replicas": 2, "minReplicas": 0, "maxReplicas": 4},
                {"groupName": "gpu", "replicas": replicas, "minReplicas": 0, "maxReplicas": 8},
            ],
        },
    }


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
async def test_scaling_a_workload_patches_its_scale_subresource(kmock: kmock.KubernetesEmulator, kubeconfig: str, kind: str) -> None:
    res = DEPLOYMENTS if kind == "Deployment" else STATEFULSETS
    kmock.objects[res, NS, "web"] = {"metadata": {"name": "web", "namespace": NS}, "spec": {"replicas": 1}}
    act = actuator(kubeconfig, kind=kind)
    assert act.namespace == NS  # from the kubeconfig context
    assert await act.current() == 1
    await act.scale(3)
    patches = list(kmock["patch"])
    assert len(patches) == 1
    assert patches[0].url.path == SCALE_PATHS[kind]
    assert patches[0].headers["Content-Type"] == "application/merge-patch+json"
    assert patches[0].data == {"spec": {"replicas": 3}}
    assert patches[0].headers["Authorization"] == "Bearer t0ken"
    assert [r.url.path for r in kmock["get"]] == [SCALE_PATHS[kind]]
    assert await act.current() == 3
    await act.close()


async def test_scaling_a_raycluster_patches_only_the_named_worker_group(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[RAYCLUSTERS, NS, "llm"] = raycluster(replicas=1)
    act = actuator(kubeconfig, kind="RayCluster", name="llm", worker_group="gpu")
    assert await act.current() == 1
    await act.scale(5)
    (patch,) = list(kmock["patch"])
    assert patch.url.path == RC_PATH
    assert patch.headers["Content-Type"] == "application/json-patch+json"
    assert patch.data == [
        {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "gpu"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 5},
    ]
    groups = kmock.objects[RAYCLUSTERS, NS, "llm"]["spec"]["workerGroupSpecs"]
    assert [g["replicas"] for g in groups] == [2, 5]  # the CPU group is untouched
    assert await act.current() == 5


async def test_scaling_a_raycluster_outside_the_group_bounds_is_refused(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[RAYCLUSTERS, NS, "llm"] = raycluster()
    act = actuator(kubeconfig, kind="RayCluster", name="llm", worker_group="gpu")
    with pytest.raises(ActuatorError, match=r"9 replicas is outside .*0\.\.8"):
        await act.scale(9)
    assert len(kmock["patch"]) == 0


async def test_an_unknown_worker_group_is_reported_with_the_groups_that_exist(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[RAYCLUSTERS, NS, "llm"] = raycluster()
    act = actuator(kubeconfig, kind="RayCluster", name="llm", worker_group="tpu")
    with pytest.raises(ActuatorError, match=r"no worker group named 'tpu' \(groups: 'cpu', 'gpu'\)"):
        await act.current()


async def test_a_missing_object_fails_at_once_naming_it(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[DEPLOYMENTS, NS, "other"] = {"spec": {"replicas": 1}}
    act = actuator(kubeconfig, name="web", max_attempts=5)
    with pytest.raises(ActuatorError, match=r"Deployment serving/web not found \(HTTP 404\)"):
        await act.current()
    assert len(kmock) == 1  # not retried


async def test_a_conflict_is_retried_and_then_succeeds(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[DEPLOYMENTS, NS, "web"] = {"spec": {"replicas": 1}}
    conflict = {"kind": "Status", "apiVersion": "v1", "code": 409, "reason": "Conflict", "message": "the object has been modified"}
    kmock["patch", SCALE_PATHS["Deployment"]][:2] << 409 << conflict
    act = actuator(kubeconfig, max_attempts=5)
    await act.scale(4)
    patches = list(kmock["patch"])
    assert len(patches) == 3  # two conflicts, then success
    assert all(p.data == {"spec": {"replicas": 4}} for p in patches)
    assert await act.current() == 4


async def test_server_errors_are_retried_then_given_up_with_an_actuator_error(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[DEPLOYMENTS, NS, "web"] = {"spec": {"replicas": 1}}
    kmock["patch", SCALE_PATHS["Deployment"]] << 503 << {"kind": "Status", "code": 503, "message": "etcd leader changed"}
    act = actuator(kubeconfig, max_attempts=4)
    with pytest.raises(ActuatorError, match=r"patch failed after 4 attempts; last error HTTP 503: etcd leader changed"):
        await act.scale(2)
    assert len(kmock["patch"]) == 4


async def test_throttling_is_retried(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[DEPLOYMENTS, NS, "web"] = {"spec": {"replicas": 2}}
    kmock["get", SCALE_PATHS["Deployment"]][:1] << 429 << {"kind": "Status", "code": 429, "message": "too many requests"}
    act = actuator(kubeconfig)
    assert await act.current() == 2
    assert len(kmock["get"]) == 2


async def test_forbidden_names_the_missing_rbac_permission(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    kmock.objects[RAYCLUSTERS, NS, "llm"] = raycluster()
    kmock["get", RC_PATH] << 403 << {"kind": "Status", "code": 403, "message": 'rayclusters.ray.io "llm" is forbidden'}
    act = actuator(kubeconfig, kind="RayCluster", name="llm", worker_group="gpu")
    with pytest.raises(ActuatorError, match=r"needs RBAC verb 'get' on resource 'rayclusters' in apiGroup 'ray.io'"):
        await act.current()
    assert len(kmock) == 1


async def test_an_unreachable_api_server_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    (tmp_path / "kc").write_text(yaml.safe_dump(cfg))
    act = actuator(str(tmp_path / "kc"), max_attempts=2)
    assert act.namespace == "default"
    with pytest.raises(ActuatorError, match=r"get failed after 2 attempts"):
        await act.current()


def test_a_raycluster_target_needs_a_worker_group() -> None:
    with pytest.raises(ValueError, match="worker_group is required"):
        KubernetesTarget(kind="RayCluster", name="llm")
    with pytest.raises(ValueError, match="applies to kind RayCluster only"):
        KubernetesTarget(kind="Deployment", name="web", worker_group="gpu")


def test_rbac_rules_cover_each_target_kind_with_read_and_patch_only() -> None:
    assert rbac_rules("Deployment") == [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]}]
    assert rbac_rules("RayCluster") == [{"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]}]
    assert len(RBAC_RULES) == 3
    assert {v for r in RBAC_RULES for v in r["verbs"]} == {"get", "patch"}


async def test_the_autoscaler_config_section_builds_this_actuator(kmock: kmock.KubernetesEmulator, kubeconfig: str, tmp_path: Path) -> None:
    from cluster.autoscaler.actuators import make_actuator
    from cluster.config import load_config

    kmock.objects[RAYCLUSTERS, NS, "llm"] = raycluster(replicas=1)
    cfg_path = tmp_path / "cluster.yaml"
    target = {"kind": "RayCluster", "name": "llm", "worker_group": "gpu", "kubeconfig": kubeconfig}
    cfg_path.write_text(yaml.safe_dump({"autoscaler": {"actuator": {"kind": "kubernetes", "kubernetes": target}}}))
    act = make_actuator(load_config(cfg_path), "smollm2-135m-instruct")
    assert isinstance(act, KubernetesActuator)
    await act.scale(2)
    (patch,) = list(kmock["patch"])
    assert patch.url.path == RC_PATH and patch.data[-1] == {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 2}
    await act.close()
