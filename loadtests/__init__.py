"""Load generator for llm-cluster (and any OpenAI-compatible server): ``python -m loadtests``.

A platform team runs it before go-live to answer "what latency do users see at this load, and where does it
break?".  It is open-loop (arrivals follow a seeded schedule and never wait for completions), drives either the
OpenAI HTTP API (streaming SSE) or the project's gRPC API, and reports the metrics of vLLM's
``vllm bench serve`` with the same definitions, so figures are comparable with numbers people already know.

Modules, one concern each: :mod:`~loadtests.arrivals` (when requests are sent), :mod:`~loadtests.lengths` and
:mod:`~loadtests.workloads` (what is sent), :mod:`~loadtests.trace` (record/replay), :mod:`~loadtests.clients`
(how it is sent and timed), :mod:`~loadtests.runner` (the open/closed loop), :mod:`~loadtests.metrics`
(statistics), :mod:`~loadtests.report` and :mod:`~loadtests.plots` (output), :mod:`~loadtests.cli`.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION"]

# Bumped when a key of result.json changes meaning or disappears (adding keys does not bump it).
SCHEMA_VERSION = 1
