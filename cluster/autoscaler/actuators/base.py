"""The actuator interface: read and set the replica count of one scaling target.

An actuator knows one target (a model's replicas on the Ray controller, a
Kubernetes Deployment / StatefulSet scale subresource, or a KubeRay worker
group) and exposes two calls to the autoscaler loop:

- ``current()`` -> the target's current *desired* replica count;
- ``scale(n)`` sets it.  Scale-down must be graceful (drain), which is the
  target's job: the Ray controller drains, Kubernetes uses preStop hooks and
  termination grace.

Transient errors (conflicts, 5xx, timeouts) are retried inside the actuator
with backoff; what is left after that is raised as :class:`ActuatorError`, and
the loop holds (it never guesses a count).
"""

from __future__ import annotations

import abc
from typing import ClassVar


class ActuatorError(RuntimeError):
    """The target could not be read or scaled after the actuator's retries."""


class Actuator(abc.ABC):
    #: Short name used in config (``autoscaler.actuator.kind``) and in metrics labels.
    kind: ClassVar[str]

    @abc.abstractmethod
    async def current(self) -> int:
        """The target's current desired replica count."""

    @abc.abstractmethod
    async def scale(self, n: int) -> None:
        """Set the target's desired replica count to ``n`` (>= 0)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""
