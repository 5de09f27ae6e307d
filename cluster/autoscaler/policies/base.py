"""The scaling-policy interface.

``decide(now, observation, current)`` is called once per loop tick with the
latest observation (or None when the source failed) and the target's current
desired count; it returns a :class:`Decision`.  A policy keeps its own history
(stabilisation windows), so it is one object per scaled model.  The loop calls
``applied(now, n)`` once the actuator has carried a change out, so cooldowns
start from real changes, not from failed attempts.
"""

from __future__ import annotations

import abc

from cluster.autoscaler.types import Decision, Observation


class ScalingPolicy(abc.ABC):
    name: str

    @abc.abstractmethod
    def decide(self, now: float, obs: Observation | None, current: int) -> Decision:
        """The replica count to have now, and why."""

    def applied(self, now: float, n: int) -> None:  # noqa: B027 - optional hook
        """The actuator set the count to ``n`` at ``now``."""
