"""Kubernetes actuator: scale a Deployment / StatefulSet or a KubeRay worker group.

Targets and the calls made (``RBAC_RULES`` lists exactly these; the Helm chart's Role is rendered from it):

- ``Deployment`` / ``StatefulSet``: ``GET`` and ``PATCH`` the ``/scale`` subresource (apiGroup ``apps``), body
  ``{"spec": {"replicas": n}}`` as a merge patch.  The scale subresource is what ``kubectl scale`` and the HPA
  use, so it never touches the pod template and needs no access to the object itself.
- ``RayCluster`` (KubeRay, ``ray.io/v1``): ``GET`` the custom object, find the worker group by name, then
  ``PATCH`` it with a JSON patch that first *tests* ``/spec/workerGroupSpecs/<i>/groupName`` and then sets
  ``/spec/workerGroupSpecs/<i>/replicas``.  A merge patch cannot address one list element (it would replace the
  whole list and race with KubeRay's own edits); the ``test`` op turns a reordered list into a rejected patch
  (HTTP 422), which is retried after a fresh read instead of scaling the wrong group.

Failure handling: 409 (conflict), 429 (throttled, honouring ``Retry-After``), 5xx and connection errors are retried
with jittered exponential backoff, at most ``max_attempts`` times; then :class:`ActuatorError`.  404 and
401/403 are not retried: they will not fix themselves, and the message names the object or the missing RBAC
permission so the operator can act.  The blocking ``kubernetes`` client runs in a worker thread so the autoscaler's
event loop keeps running while the API server is slow.

Credentials: in a pod (``KUBERNETES_SERVICE_HOST`` set and no kubeconfig/context given) the ServiceAccount token;
otherwise a kubeconfig (``kubeconfig`` path or ``$KUBECONFIG`` / ``~/.kube/config``) and optional ``context``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cluster.autoscaler.actuators.base import Actuator, ActuatorError
from cluster.config_autoscaler import KubernetesTarget

log = logging.getLogger(__name__)

T = TypeVar("T")

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"

#: (apiGroup, resource) each target kind reads and patches.
_RESOURCES: dict[str, tuple[str, str]] = {
    "Deployment": ("apps", "deployments/scale"),
    "StatefulSet": ("apps", "statefulsets/scale"),
    "RayCluster": (RAY_GROUP, RAY_PLURAL),
}
#: The verbs every target needs: read the current count, patch the new one.  Nothing else is called.
_VERBS = ["get", "patch"]


def rbac_rules(kind: str) -> list[dict[str, list[str]]]:
    """The RBAC rules one target kind needs (a Role's ``rules``, without ``resourceNames``)."""
    group, resource = _RESOURCES[kind]
    return [{"apiGroups": [group], "resources": [resource], "verbs": list(_VERBS)}]


#: Every rule this module's code can exercise, over all target kinds.  The Helm chart renders the subset for its
#: target (``rbac_rules(kind)``, scoped with ``resourceNames``); tests/helm checks that it stays exactly this.
RBAC_RULES: list[dict[str, list[str]]] = [rule for kind in _RESOURCES for rule in rbac_rules(kind)]

#: HTTP statuses worth another try: conflict, throttling, server-side trouble.
_RETRY_STATUSES = {409, 429, 500, 502, 503, 504}


class KubernetesActuator(Actuator):
    kind: ClassVar[str] = "kubernetes"

    def __init__(self, target: KubernetesTarget, api_client: Any = None) -> None:
        self.target = target
        self._api = api_client if api_client is not None else _make_api_client(target)
        self.namespace = target.namespace or _default_namespace(target)
        from kubernetes import client

        self._apps = client.AppsV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    # ---- interface ------------------------------------------------------------------------
    async def current(self) -> int:
        return await self._retrying("get", self._read)

    async def scale(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"replicas must be >= 0, got {n}")
        await self._retrying("patch", lambda: self._patch(n))
        log.info("kubernetes target scaled", extra={"target": self.describe(), "replicas": n})

    async def close(self) -> None:
        await asyncio.to_thread(self._api.close)

    def describe(self) -> str:
        t = self.target
        group = f" worker group {t.worker_group!r}" if t.kind == "RayCluster" else ""
        return f"{t.kind} {self.namespace}/{t.name}{group}"

    # ---- blocking calls (run in a worker thread) ----------------------------------------------
    def _read(self) -> int:
        t = self.target
        timeout = t.request_timeout_s
        if t.kind == "Deployment":
            return int(self._apps.read_namespaced_deployment_scale(t.name, self.namespace, _request_timeout=timeout).spec.replicas or 0)
        if t.kind == "StatefulSet":
            return int(self._apps.read_namespaced_stateful_set_scale(t.name, self.namespace, _request_timeout=timeout).spec.replicas or 0)
        _, group = self._find_group(self._get_raycluster())
        return int(group.get("replicas") or 0)

    def _patch(self, n: int) -> None:
        t = self.target
        timeout = t.request_timeout_s
        body: Any = {"spec": {"replicas": n}}
        if t.kind == "Deployment":
            self._apps.patch_namespaced_deployment_scale(
                t.name, self.namespace, body, _request_timeout=timeout, _content_type="application/merge-patch+json"
            )
            return
        if t.kind == "StatefulSet":
            self._apps.patch_namespaced_stateful_set_scale(
                t.name, self.namespace, body, _request_timeout=timeout, _content_type="application/merge-patch+json"
            )
            return
        i, group = self._find_group(self._get_raycluster())
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            # KubeRay silently clamps to [minReplicas, maxReplicas]; say so instead of pretending to scale.
            raise ActuatorError(f"{self.describe()}: {n} replicas is outside the group's minReplicas..maxReplicas = {lo}..{hi}")
        op = "replace" if "replicas" in group else "add"
        body = [
            {"op": "test", "path": f"/spec/workerGroupSpecs/{i}/groupName", "value": t.worker_group},
            {"op": op, "path": f"/spec/workerGroupSpecs/{i}/replicas", "value": n},
        ]
        self._custom.patch_namespaced_custom_object(
            RAY_GROUP,
            RAY_VERSION,
            self.namespace,
            RAY_PLURAL,
            t.name,
            body,
            _request_timeout=timeout,
            _content_type="application/json-patch+json",
        )

    def _get_raycluster(self) -> dict[str, Any]:
        t = self.target
        return self._custom.get_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, self.namespace, RAY_PLURAL, t.name, _request_timeout=t.request_timeout_s
        )

    def _find_group(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        groups = (obj.get("spec") or {}).get("workerGroupSpecs") or []
        for i, g in enumerate(groups):
            if g.get("groupName") == self.target.worker_group:
                return i, g
        names = ", ".join(repr(g.get("groupName")) for g in groups) or "none"
        raise ActuatorError(f"{self.describe()}: no worker group named {self.target.worker_group!r} (groups: {names})")

    # ---- retries ------------------------------------------------------------------------------
    async def _retrying(self, verb: str, op: Callable[[], T]) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        t = self.target
        attempts = t.max_attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                return await asyncio.to_thread(op)
            except ApiException as exc:
                status = exc.status or 0
                if status == 404:
                    raise ActuatorError(f"{self.describe()} not found (HTTP 404): {_api_message(exc)}") from None
                if status in (401, 403):
                    raise ActuatorError(self._rbac_message(verb, status, exc)) from None
                # 422 on a RayCluster patch is our JSON-patch `test` failing: the group list changed under us.
                retryable = status in _RETRY_STATUSES or (status == 422 and t.kind == "RayCluster" and verb == "patch")
                if not retryable:
                    raise ActuatorError(f"{self.describe()}: {verb} rejected (HTTP {status}): {_api_message(exc)}") from None
                error = f"HTTP {status}: {_api_message(exc)}"
                retry_after = _retry_after(exc)
            except (Urllib3Error, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt == attempts:
                raise ActuatorError(f"{self.describe()}: {verb} failed after {attempts} attempts; last error {error}")
            delay = min(t.backoff_max_s, t.backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, t.backoff_max_s))
            log.warning(
                "kubernetes call failed, retrying",
                extra={"target": self.describe(), "verb": verb, "attempt": attempt, "error": error, "delay_s": round(delay, 3)},
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _rbac_message(self, verb: str, status: int, exc: Any) -> str:
        group, resource = _RESOURCES[self.target.kind]
        what = "unauthenticated (HTTP 401): the credentials were rejected" if status == 401 else "forbidden (HTTP 403)"
        return (
            f"{self.describe()}: {verb} {what}; the autoscaler's identity needs RBAC verb {verb!r} on resource "
            f"{resource!r} in apiGroup {group!r} (namespace {self.namespace!r}, resourceNames [{self.target.name!r}]) "
            f"- see RBAC_RULES in cluster/autoscaler/actuators/kubernetes.py. Server said: {_api_message(exc)}"
        )


# ---- helpers ------------------------------------------------------------------------------------
def _in_cluster(target: KubernetesTarget) -> bool:
    return not target.kubeconfig and not target.context and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _make_api_client(target: KubernetesTarget) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if _in_cluster(target):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=target.kubeconfig, context=target.context, client_configuration=cfg)
    except (config.ConfigException, OSError) as exc:
        where = "in-cluster service account" if _in_cluster(target) else f"kubeconfig {target.kubeconfig or '(default)'}"
        raise ActuatorError(f"cannot load Kubernetes credentials from {where}: {exc}") from None
    # Our own loop retries; urllib3's hidden retries would multiply the attempts and the latency.
    cfg.retries = False
    return client.ApiClient(cfg)


def _default_namespace(target: KubernetesTarget) -> str:
    if _in_cluster(target):
        try:
            return SA_NAMESPACE_FILE.read_text().strip() or "default"
        except OSError:
            return "default"
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=target.kubeconfig)
        if target.context:
            contexts, _ = config.list_kube_config_contexts(config_file=target.kubeconfig)
            active = next((c for c in contexts if c["name"] == target.context), active)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except (config.ConfigException, OSError):
        return "default"


def _api_message(exc: Any) -> str:
    import json

    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])[:300]
    except (TypeError, ValueError):
        pass
    return str(exc.reason or "no details")


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


__all__ = ["RBAC_RULES", "KubernetesActuator", "KubernetesTarget", "rbac_rules"]
