"""Write deploy/helm/llm-cluster/values.schema.json (run via `make helm-schema`).

The chart's own values are described here; the `cluster` value (rendered into cluster.yaml) takes its schema from
the pydantic model in cluster/config.py, so the chart rejects exactly the fields and types the code rejects, plus a
few chart-only rules: at least one model, each naming its `source`, and `router.policy` limited to the known
policies.  tests/helm/test_chart_schemas.py fails when the committed file differs from what this script writes.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA_PATH = ROOT / "deploy/helm/llm-cluster/values.schema.json"

Schema = dict[str, Any]


def obj(props: dict[str, Schema], required: list[str] | None = None, description: str | None = None) -> Schema:
    out: Schema = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


def string(description: str | None = None, **kw: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **kw}


def integer(minimum: int | None = 0, **kw: Any) -> Schema:
    out: Schema = {"type": "integer", **kw}
    if minimum is not None:
        out["minimum"] = minimum
    return out


BOOL: Schema = {"type": "boolean"}
STR_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
# Kubernetes objects passed through verbatim (the API server validates them): any mapping / list of mappings.
K8S_OBJECT: Schema = {"type": "object"}
K8S_LIST: Schema = {"type": "array", "items": {"type": "object"}}
QUANTITY: Schema = {"type": ["string", "integer", "number"]}
RESOURCES: Schema = obj(
    {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
    description="container resources (requests/limits)",
)
DNS_NAME: Schema = string(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=40)
PLACEMENT: dict[str, Schema] = {"nodeSelector": STR_MAP, "tolerations": K8S_LIST, "affinity": K8S_OBJECT}
PORT: Schema = integer(1, maximum=65535)
RAY_PARAMS: Schema = {"type": "object", "additionalProperties": {"type": ["string", "integer", "number", "boolean"]}}


def chart_schema(cluster: Schema) -> Schema:
    worker_group = obj(
        {
            "name": DNS_NAME,
            "replicas": integer(0),
            "minReplicas": integer(0),
            "maxReplicas": integer(0),
            "gpus": integer(0, description="nvidia.com/gpu per pod; 0 = CPU-only group"),
            "rayStartParams": RAY_PARAMS,
            "resources": RESOURCES,
            **PLACEMENT,
            "models": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        },
        required=["name", "replicas", "minReplicas", "maxReplicas", "gpus"],
    )
    return {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "llm-cluster Helm chart values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": {"type": "object"},
            "nameOverride": string(),
            "fullnameOverride": string(),
            "commonLabels": STR_MAP,
            "image": obj(
                {
                    "repository": string(minLength=1),
                    "tag": string(),
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                },
                required=["repository"],
            ),
            "imagePullSecrets": K8S_LIST,
            "cluster": cluster,
            "secrets": obj(
                {
                    "hubToken": obj({"name": string("Secret name; empty: none"), "key": string(minLength=1)}),
                    "apiKeys": obj({"name": string("Secret name; empty: none"), "key": string(minLength=1)}),
                    "tls": obj(
                        {
                            "router": string("kubernetes.io/tls Secret for the router's public ports; empty: none"),
                            "internal": string("Secret with ca.crt, tls.crt, tls.key for router<->replica mTLS; empty: none"),
                        }
                    ),
                }
            ),
            "loraAdapters": obj(
                {
                    "enabled": BOOL,
                    "mountPath": string(pattern="^/"),
                    "pvc": obj({"existingClaim": string()}),
                    "initContainer": K8S_OBJECT,
                },
                description="LoRA adapters mounted on every Ray pod (from a PVC or written by an init container)",
            ),
            "modelStorage": obj(
                {
                    "type": {"enum": ["emptyDir", "pvc", "hostPath"]},
                    "mountPath": string(pattern="^/"),
                    "pvc": obj(
                        {
                            "existingClaim": string(),
                            "size": QUANTITY,
                            "storageClassName": string(),
                            "accessModes": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]},
                            },
                        }
                    ),
                    "hostPath": obj({"path": string(pattern="^/")}),
                    "emptyDir": obj({"sizeLimit": QUANTITY}),
                },
                required=["type", "mountPath"],
            ),
            "ray": obj(
                {
                    "rayVersion": string(minLength=1),
                    "enableInTreeAutoscaling": BOOL,
                    "head": obj(
                        {
                            "rayStartParams": RAY_PARAMS,
                            "resources": RESOURCES,
                            **PLACEMENT,
                        }
                    ),
                    "workerGroups": {"type": "array", "items": worker_group},
                    "terminationGracePeriodSeconds": integer(10),
                }
            ),
            "router": obj(
                {
                    "replicas": integer(1),
                    "resources": RESOURCES,
                    "service": obj(
                        {
                            "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                            "grpcPort": PORT,
                            "httpPort": PORT,
                            "metricsPort": PORT,
                            "annotations": STR_MAP,
                        }
                    ),
                    "hpa": obj(
                        {
                            "enabled": BOOL,
                            "minReplicas": integer(1),
                            "maxReplicas": integer(1),
                            "targetCPUUtilizationPercentage": integer(1, maximum=100),
                        }
                    ),
                    "pdb": obj({"enabled": BOOL, "minAvailable": {"type": ["integer", "string"], "minimum": 0}}),
                    **PLACEMENT,
                    "podAnnotations": STR_MAP,
                }
            ),
            "autoscaler": obj(
                {
                    "enabled": BOOL,
                    "model": string("model to scale; empty: the first"),
                    "prometheusUrl": string(pattern="^https?://"),
                    "metricsPort": PORT,
                    "policy": obj(
                        {
                            "metric": {"enum": ["load", "kv_usage", "token_throughput"]},
                            "target": {"type": "number", "exclusiveMinimum": 0},
                            "minReplicas": integer(0),
                            "maxReplicas": integer(1),
                        }
                    ),
                    "actuator": obj(
                        {
                            "kind": {"enum": ["ray", "kubernetes"]},
                            "target": obj(
                                {
                                    "kind": {"enum": ["RayCluster", "Deployment", "StatefulSet"]},
                                    "name": string("empty: this chart's RayCluster"),
                                    "workerGroup": string("RayCluster: empty = the first worker group"),
                                }
                            ),
                        }
                    ),
                    "resources": RESOURCES,
                    **PLACEMENT,
                }
            ),
            "keda": obj(
                {
                    "enabled": BOOL,
                    "workerGroup": string(),
                    "prometheusUrl": string(pattern="^https?://"),
                    "threshold": string(pattern=r"^[0-9]+(\.[0-9]+)?$"),
                    "minReplicaCount": integer(0),
                    "maxReplicaCount": integer(1),
                    "pollingInterval": integer(1),
                    "cooldownPeriod": integer(0),
                }
            ),
            "monitoring": obj(
                {
                    "labels": STR_MAP,
                    "serviceMonitor": obj({"enabled": BOOL, "interval": string(pattern=r"^[0-9]+(ms|s|m|h)$")}),
                    "podMonitor": obj(
                        {"enabled": BOOL, "interval": string(pattern=r"^[0-9]+(ms|s|m|h)$"), "replicaSlots": integer(0, maximum=64)}
                    ),
                    "prometheusRule": obj({"enabled": BOOL}),
                    "grafanaDashboard": obj({"enabled": BOOL, "label": string(minLength=1), "labelValue": string()}),
                }
            ),
            "networkPolicy": obj(
                {
                    "enabled": BOOL,
                    "ingressFrom": K8S_LIST,
                    "prometheusNamespace": string(minLength=1),
                }
            ),
        },
    }


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def cluster_schema() -> tuple[Schema, dict[str, Schema]]:
    """The pydantic schema of ClusterConfig, with chart-only tightening; returns (schema, $defs)."""
    from cluster.config import ClusterConfig
    from cluster.router.policies import POLICIES

    raw = ClusterConfig.model_json_schema(mode="validation")
    defs: dict[str, Schema] = raw.pop("$defs", {})
    raw.pop("title", None)
    raw["description"] = "cluster.yaml (cluster/config.py, docs/configuration.md); ray.address and router.host are set by the chart"

    # Every model in a deployment names its weights; the built-in default model is for laptops.
    models = raw["properties"]["models"]
    models.pop("default", None)
    models["minItems"] = 1
    model_def = defs[_ref_name(models["items"]["$ref"])]
    model_def["required"] = sorted(set(model_def.get("required", [])) | {"name", "source"})
    model_def["properties"]["source"]["minLength"] = 1

    router_ref = _find_ref(raw["properties"]["router"])
    defs[router_ref]["properties"]["policy"]["enum"] = list(POLICIES)
    return raw, defs


def _find_ref(prop: Schema) -> str:
    if "$ref" in prop:
        return _ref_name(prop["$ref"])
    for alt in prop.get("anyOf", []) + prop.get("allOf", []):
        if "$ref" in alt:
            return _ref_name(alt["$ref"])
    raise KeyError(prop)


def build() -> Schema:
    cluster, defs = cluster_schema()
    schema = chart_schema(cluster)
    schema["$defs"] = copy.deepcopy(defs)
    return schema


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
