"""One stall watchdog per stream, instead of a timer per token.

Spec: a stream that gets no chunk for ``limit_s`` while the router waits on
its replica has stalled (``stall_timeout_s``).  The watch holds one timer for
the whole stream: per chunk the relay only notes the time it starts waiting
(:meth:`StallWatch.waiting`) and that it got something (:meth:`got`); when
the timer fires it checks those notes and either re-arms itself for the rest
of the period or expires the stream's ``asyncio.timeout`` block, which
cancels the wait on the replica and raises ``TimeoutError`` where the block
ends.  Time the caller holds a chunk (a slow client) never counts.

Cost: two attribute writes and a clock read per chunk; one timer-heap
operation per ``limit_s`` of stream life (``asyncio.timeout`` per chunk cost a
Timeout object and a heap push and cancel per token).
"""

from __future__ import annotations

import asyncio


class StallWatch:
    __slots__ = ("_handle", "_limit", "_loop", "_timeout", "_waiting", "last")

    def __init__(self, timeout: asyncio.Timeout, limit_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._limit = limit_s
        self._waiting = False
        self.last = self._loop.time()
        self._handle = self._loop.call_at(self.last + limit_s, self._check)

    def waiting(self) -> None:
        """The relay now waits on the replica for the next chunk (a caller already waiting may just set
        ``last``, the time of the latest chunk, on ``time.monotonic``'s clock as the loop's)."""
        self.last = self._loop.time()
        self._waiting = True

    def got(self) -> None:
        self._waiting = False

    def _check(self) -> None:
        now = self._loop.time()
        if self._waiting and now - self.last >= self._limit:
            self._timeout.reschedule(now)  # expire: cancels the wait, TimeoutError at the block's end
            return
        start = self.last if self._waiting else now
        self._handle = self._loop.call_at(start + self._limit, self._check)

    def close(self) -> None:
        self._handle.cancel()
