"""Write deploy/grafana/llm-cluster.json, the cluster's Grafana dashboard (run after editing the panels here).

One row per question an operator asks: how much traffic and how many errors; how fast (client-side TTFT,
ITL, E2E percentiles); where requests wait (admission queue, no ready replica, engine queues); how full the
engines are (KV cache, running); how many replicas (desired vs ready) and why the autoscaler changed them;
how busy each router worker is (its CPU and memory).
tests/unit/test_dashboard.py checks every query with promtool and that the committed file is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "llm-cluster.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'


def panel(
    title: str, targets: list[tuple[str, str]], x: int, y: int, *, w: int = 12, h: int = 8, unit: str = "short", desc: str = ""
) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 5}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend} for i, (expr, legend) in enumerate(targets)
        ],
    }


def row(title: str, y: int) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def quantiles(metric: str) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by (model, le) (rate({metric}_bucket{{{M}}}[$__rate_interval])))", f"p{int(q * 100)} {{{{model}}}}")
        for q in (0.5, 0.9, 0.99)
    ]


def build() -> dict[str, Any]:
    panels: list[dict] = []
    y = 0
    panels.append(row("Traffic", y))
    y += 1
    panels += [
        panel(
            "Requests / s by status",
            [(f"sum by (model, code) (rate(llm_cluster_router_requests_total{{{M}}}[$__rate_interval]))", "{{model}} {{code}}")],
            0,
            y,
            unit="reqps",
        ),
        panel(
            "Tokens / s",
            [
                (f"sum by (model) (rate(vllm:generation_tokens_total{{{M}}}[$__rate_interval]))", "generated {{model}}"),
                (f"sum by (model) (rate(vllm:prompt_tokens_total{{{M}}}[$__rate_interval]))", "prompt {{model}}"),
            ],
            12,
            y,
        ),
    ]
    y += 8
    panels.append(row("Latency (as clients see it, at the router)", y))
    y += 1
    panels += [
        panel("Time to first token", quantiles("llm_cluster_router_time_to_first_token_seconds"), 0, y, w=8, unit="s"),
        panel("Inter-token latency", quantiles("llm_cluster_router_inter_token_latency_seconds"), 8, y, w=8, unit="s"),
        panel("End-to-end latency", quantiles("llm_cluster_router_e2e_request_latency_seconds"), 16, y, w=8, unit="s"),
    ]
    y += 8
    panels.append(row("Queues and load", y))
    y += 1
    panels += [
        panel(
            "Where requests wait",
            [
                (f"sum by (model) (llm_cluster_router_admission_queue_depth{{{M}}})", "admission queue {{model}}"),
                (f"sum by (model) (llm_cluster_router_waiting_for_replica{{{M}}})", "no ready replica {{model}}"),
                (f"sum by (model) (vllm:num_requests_waiting{{{M}}})", "engine queues {{model}}"),
                (f"sum by (model) (llm_cluster_router_in_flight_requests{{{M}}})", "in flight at the router {{model}}"),
            ],
            0,
            y,
            w=8,
        ),
        panel(
            "KV-cache usage per replica",
            [(f"vllm:kv_cache_usage_perc{{{M}}}", "{{replica}}")],
            8,
            y,
            w=8,
            unit="percentunit",
        ),
        panel(
            "Running requests per replica",
            [(f"vllm:num_requests_running{{{M}}}", "{{replica}}")],
            16,
            y,
            w=8,
        ),
    ]
    y += 8
    panels.append(row("Replicas and autoscaling", y))
    y += 1
    panels += [
        panel(
            "Replicas: desired vs ready",
            [
                (f"max by (model) (llm_cluster_controller_desired_replicas{{{M}}})", "desired (controller) {{model}}"),
                (f"max by (model) (llm_cluster_controller_ready_replicas{{{M}}})", "ready (controller) {{model}}"),
                (f"max by (model) (llm_cluster_router_replicas_healthy{{{M}}})", "healthy (router) {{model}}"),
                (f"max by (model) (llm_cluster_autoscaler_desired_replicas{{{M}}})", "autoscaler decision {{model}}"),
            ],
            0,
            y,
            w=8,
        ),
        panel(
            "Autoscaler decisions (changes) by reason",
            [
                (
                    "sum by (model, action, reason) "
                    f'(increase(llm_cluster_autoscaler_decisions_total{{{M}, action!="hold"}}[$__rate_interval]))',
                    "{{action}} {{reason}} {{model}}",
                )
            ],
            8,
            y,
            w=8,
            desc="Each change with its reason; holds are in the next panel. Logs carry the numbers behind each decision.",
        ),
        panel(
            "Autoscaler: signal, holds, errors",
            [
                (f"max by (model, metric) (llm_cluster_autoscaler_observed_load{{{M}}})", "observed {{metric}} {{model}}"),
                (f"max by (model) (llm_cluster_autoscaler_metrics_stale{{{M}}})", "holding on stale data {{model}}"),
                (
                    f"sum by (model) (increase(llm_cluster_autoscaler_actuator_errors_total{{{M}}}[$__rate_interval]))",
                    "actuator errors {{model}}",
                ),
            ],
            16,
            y,
            w=8,
        ),
    ]
    y += 8
    panels.append(row("Routing", y))
    y += 1
    panels += [
        panel(
            "Routing decisions",
            [
                (
                    f"sum by (policy, outcome) (rate(llm_cluster_router_routing_decisions_total{{{M}}}[$__rate_interval]))",
                    "{{policy}} {{outcome}}",
                )
            ],
            0,
            y,
            w=8,
            unit="reqps",
        ),
        panel(
            "Retries by reason",
            [(f"sum by (reason) (rate(llm_cluster_router_retries_total{{{M}}}[$__rate_interval]))", "{{reason}}")],
            8,
            y,
            w=8,
            unit="reqps",
        ),
        panel(
            "Prefix-cache hit ratio",
            [
                (
                    f"sum by (model) (rate(vllm:prefix_cache_hits_total{{{M}}}[$__rate_interval])) / "
                    f"sum by (model) (rate(vllm:prefix_cache_queries_total{{{M}}}[$__rate_interval]))",
                    "{{model}}",
                )
            ],
            16,
            y,
            w=8,
            unit="percentunit",
        ),
    ]
    y += 8
    panels.append(row("Router processes", y))
    y += 1
    # The router's own process_* series: those of a target that also serves llm_cluster_router_* (a router or
    # one of its workers), whatever the scrape job is called.
    router = "and on (instance, worker) llm_cluster_router_replicas_known"
    panels += [
        panel(
            "Router CPU by worker",
            [(f"rate(process_cpu_seconds_total[$__rate_interval]) {router}", "{{instance}} worker {{worker}}")],
            0,
            y,
            unit="short",
            desc="CPU cores each router worker uses; a worker near 1 is saturated (more workers or a higher CPU limit).",
        ),
        panel(
            "Router memory by worker",
            [(f"process_resident_memory_bytes {router}", "{{instance}} worker {{worker}}")],
            12,
            y,
            unit="bytes",
        ),
    ]
    return {
        "title": "llm-cluster",
        "uid": "llm-cluster",
        "description": "Traffic, latency, queues, KV cache, replicas and autoscaler decisions of an llm-cluster deployment.",
        "tags": ["llm-cluster", "vllm"],
        "timezone": "browser",
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus", "current": {}},
                {
                    "name": "model",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(llm_cluster_router_replicas_known, model)", "refId": "models"},
                    "definition": "label_values(llm_cluster_router_replicas_known, model)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
