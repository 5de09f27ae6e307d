"""The autoscaler: metrics source -> policy -> actuator, in one loop (`llm-cluster autoscaler`).

- ``sources/``: ``prometheus`` (PromQL over the HTTP API), ``scrape`` (replicas' /metrics directly);
- ``policies/``: ``target_tracking`` (per-replica load target, TTFT-SLO guard, windows, cooldown);
- ``actuators/``: ``ray`` (the controller's ``set_replicas``, drains on scale-down), ``kubernetes``;
- ``loop.py``: the loop, its decision log and its ``llm_cluster_autoscaler_*`` metrics;
- ``build.py``: all of it from the ``autoscaler`` config section.
"""
