"""The metrics-source interface: one call, ``observe(model)`` -> Observation.

A source raises nothing for missing data: it returns ``None`` fields (or an
old ``at``) and the policy holds.  Transport errors (Prometheus down) are
raised as :class:`SourceError`; the loop logs them and holds.
"""

from __future__ import annotations

import abc

from cluster.autoscaler.types import Observation


class SourceError(RuntimeError):
    """The source could not be read at all (connection refused, bad PromQL, HTTP error)."""


class MetricsSource(abc.ABC):
    kind: str

    @abc.abstractmethod
    async def observe(self, model: str) -> Observation:
        """Read the model's current load."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release HTTP sessions."""
