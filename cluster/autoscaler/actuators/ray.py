"""Ray actuator: the controller actor's ``set_replicas`` for one model.

Scale-down drains inside the controller (the replica leaves the endpoint set,
finishes its in-flight requests up to ``controller.drain_timeout_s``, then
stops), so the actuator only sets the number.  Transient Ray errors (the
controller restarting, a timed-out call) are retried with jittered backoff;
an unknown model is not transient and fails at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cluster.autoscaler.actuators.base import Actuator, ActuatorError

T = TypeVar("T")


class RayActuator(Actuator):
    kind = "ray"

    def __init__(self, controller: Any, model: str, *, attempts: int = 4, timeout_s: float = 10.0) -> None:
        self.controller = controller
        self.model = model
        self.attempts = attempts
        self.timeout_s = timeout_s

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return await asyncio.wait_for(fn(), self.timeout_s)
            except ValueError as exc:  # unknown model / bad count: retrying cannot help
                raise ActuatorError(f"ray controller refused {what}: {exc}") from None
            except Exception as exc:
                cause = exc.cause if hasattr(exc, "cause") and isinstance(exc.cause, ValueError) else None  # RayTaskError wraps
                if cause is not None:
                    raise ActuatorError(f"ray controller refused {what}: {cause}") from None
                last = exc
                await asyncio.sleep(random.uniform(0.5, 1.0) * 0.2 * 2**attempt)
        raise ActuatorError(f"ray controller: {what} failed after {self.attempts} attempts: {last!r}")

    async def current(self) -> int:
        counts = await self._call("reading replicas", lambda: self.controller.replica_counts.remote(self.model))
        return int(counts["desired"])

    async def scale(self, n: int) -> None:
        if n < 0:
            raise ActuatorError(f"replica count must be >= 0, got {n}")
        await self._call(f"set_replicas({self.model!r}, {n})", lambda: self.controller.set_replicas.remote(self.model, n))
