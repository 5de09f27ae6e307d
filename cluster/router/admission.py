"""The router's admission queue: bounded, deadline-aware, weighted-fair.

Requests are admitted to the replicas while the router's in-flight count is
below ``capacity()`` (e.g. ready replicas x per-replica concurrency); the rest
wait here.  When a slot frees, the next request is chosen by weighted fair
queuing (self-clocked fair queuing over virtual time):

- every tenant is a flow with its own FIFO;
- a request's finish tag is ``max(V, flow's last tag) + cost / weight``, where
  cost is its estimated tokens and weight comes from its priority class
  (``interactive`` outweighs ``batch``), and V is the finish tag of the last
  request dispatched;
- the head request with the smallest tag goes next.

So a tenant flooding the queue only lengthens its own flow: another tenant's
request is tagged from the current virtual time and passes the backlog, and
interactive traffic gets ``weight`` times the share of batch traffic under
contention.  Without contention (free capacity) nothing waits, and V moves up
to the admitted request's tag, so past use does not count against a tenant
when contention begins (every flow then starts from the same V).

Refusals are immediate and explicit, never a hang: a full queue raises
:class:`QueueFull`, and a request still waiting at its deadline raises
:class:`QueueTimeout`; both carry a ``retry_after_s`` for HTTP 429 /
RESOURCE_EXHAUSTED.  Every waiter is removed from the queue on every exit path
(admitted, timed out, cancelled by its client), so the queue cannot leak.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_WEIGHTS = {"interactive": 8.0, "batch": 1.0}


class AdmissionRefused(Exception):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class QueueFull(AdmissionRefused):
    pass


class QueueTimeout(AdmissionRefused):
    pass


@dataclass(eq=False)
class _Waiter:
    flow: str
    tag: float
    seq: int
    future: asyncio.Future
    cost: float = 1.0
    done: bool = field(default=False)


class AdmissionQueue:
    def __init__(
        self,
        capacity: Callable[[], int],
        max_queue: int,
        weights: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = capacity
        self.max_queue = max_queue
        self.weights = weights or DEFAULT_WEIGHTS
        self._clock = clock
        self.in_flight = 0
        self._flows: dict[str, deque[_Waiter]] = {}
        self._last_tag: dict[str, float] = {}
        self._heads: list[tuple[float, int, _Waiter]] = []
        self._vtime = 0.0
        self._seq = itertools.count()
        self.waiting = 0

    def _weight(self, priority: str) -> float:
        return self.weights.get(priority, 1.0)

    async def admit(self, flow: str, priority: str = "interactive", cost: float = 1.0, timeout_s: float | None = None) -> None:
        """Wait for a slot; call :meth:`release` exactly once after an admission."""
        if self.try_admit(flow, priority, cost):
            return
        if self.waiting >= self.max_queue:
            raise QueueFull(f"admission queue full ({self.max_queue} waiting)", 1.0)
        tag = max(self._vtime, self._last_tag.get(flow, 0.0)) + cost / self._weight(priority)
        self._last_tag[flow] = tag
        w = _Waiter(flow, tag, next(self._seq), asyncio.get_running_loop().create_future(), cost)
        q = self._flows.setdefault(flow, deque())
        q.append(w)
        if len(q) == 1:
            heapq.heappush(self._heads, (w.tag, w.seq, w))
        self.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(w.future), timeout_s)
        except TimeoutError:
            if not w.future.done():
                self._remove(w)
                raise QueueTimeout(f"waited {timeout_s:.1f} s for capacity in the admission queue", 1.0) from None
        except asyncio.CancelledError:
            if not w.future.done():
                self._remove(w)
            else:  # admitted just as the client left: hand the slot on
                self.release()
            raise

    def try_admit(self, flow: str, priority: str = "interactive", cost: float = 1.0) -> bool:
        """Admit at once when nobody waits and a slot is free (then :meth:`release` once); False: :meth:`admit`."""
        if self.waiting == 0 and self.in_flight < self._capacity():
            self.in_flight += 1
            self._advance(flow, cost / self.weights.get(priority, 1.0))
            return True
        return False

    def _advance(self, flow: str, inc: float) -> None:
        self._last_tag[flow] = max(self._vtime, self._last_tag.get(flow, 0.0)) + inc
        self._vtime = max(self._vtime, self._last_tag[flow])
        if len(self._last_tag) > 4 * (self.waiting + 64):
            # Forget idle flows whose tags are in the past: they restart at V anyway.
            self._last_tag = {f: t for f, t in self._last_tag.items() if t > self._vtime or f in self._flows}

    def _remove(self, w: _Waiter) -> None:
        q = self._flows.get(w.flow)
        if q is None:
            return
        was_head = q and q[0] is w
        try:
            q.remove(w)
        except ValueError:
            return
        self.waiting -= 1
        if not q:
            del self._flows[w.flow]
        elif was_head:
            heapq.heappush(self._heads, (q[0].tag, q[0].seq, q[0]))
        w.done = True  # its stale heap entry is skipped on pop

    def release(self) -> None:
        self.in_flight -= 1
        if self._heads:  # else nobody waits: nothing to dispatch
            self.dispatch()

    def dispatch(self) -> None:
        """Admit waiters while capacity allows (also call when capacity grows)."""
        cap = self._capacity()
        while self._heads and self.in_flight < cap:
            _, _, w = heapq.heappop(self._heads)
            if w.done:
                continue
            q = self._flows[w.flow]
            q.popleft()
            self.waiting -= 1
            if q:
                heapq.heappush(self._heads, (q[0].tag, q[0].seq, q[0]))
            else:
                del self._flows[w.flow]
            w.done = True
            self._vtime = max(self._vtime, w.tag)
            self.in_flight += 1
            w.future.set_result(None)

    def depth(self) -> int:
        return self.waiting
