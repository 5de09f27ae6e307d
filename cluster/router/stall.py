"""One watchdog per attempt, instead of a timer per token (and one per phase).

Spec: a stream that gets no chunk for ``limit_s`` while the router waits on
its replica has stalled (``stall_timeout_s``).  Before its first chunk an
attempt may wait ``first_s`` (``first_token_timeout_s``), and no attempt runs
past ``ends_at`` (the request's deadline).  The watch holds one timer for the
whole attempt: per chunk the relay only notes the time it starts waiting
(:meth:`StallWatch.waiting`; a pump keeps its own ``last``, :meth:`follow` ed) and
that it got something (:meth:`got`); the first chunk ends the first-token
phase (:meth:`started`).  When the timer fires it checks those notes and
either re-arms itself or expires the attempt: the watch is the attempt's
``with`` block and does what ``asyncio.timeout`` does, without its objects
and calls per request: it cancels the task (the wait on the replica), and
where the block ends that cancellation becomes ``TimeoutError`` (a
cancellation from outside, the client leaving, stays one); ``why`` then says
which limit it was: ``"first_token"``, ``"stall"`` or ``"deadline"``.  Time
the caller holds a chunk (a slow client) never counts as a stall.

Cost: two attribute writes and a clock read per chunk; one timer-heap
operation per ``limit_s`` of stream life (``asyncio.timeout`` per chunk cost a
Timeout object and a heap push and cancel per token; one per phase, three
timers per request).  Failure mode: used outside a task (no current task),
it raises at once.
"""

from __future__ import annotations

import asyncio
from typing import Any


class StallWatch:
    """``with StallWatch(limit_s, first_s, ends_at) as watch:`` — ``TimeoutError`` at the block's end when it expired."""

    __slots__ = ("_cancelling", "_ends_at", "_first_s", "_handle", "_limit", "_loop", "_source", "_task", "_waiting", "last", "why")

    def __init__(self, limit_s: float, first_s: float | None = None, ends_at: float | None = None) -> None:
        self._loop = loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("StallWatch must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()  # cancellations already asked for (not this watch's)
        self._limit = limit_s
        #: Before the first chunk: the first-token limit (None once started, or when not watched).
        self._first_s = first_s
        self._ends_at = ends_at
        self._waiting = first_s is not None
        self.why: str | None = None
        self.last = now = loop.time()
        #: While a pump relays the stream: it keeps the latest chunk's time itself (its ``last``).
        self._source: Any = None
        self._handle = loop.call_at(self._cap(now + (limit_s if first_s is None else first_s)), self._check)

    def _cap(self, when: float) -> float:
        ends = self._ends_at
        return when if ends is None or when < ends else ends

    def started(self) -> None:
        """The first chunk arrived: from now on the stall limit counts (re-armed at the timer's next check)."""
        self._first_s = None
        self._waiting = False
        self.last = self._loop.time()

    def waiting(self) -> None:
        """The relay now waits on the replica for the next chunk (a caller already waiting may just set
        ``last``, the time of the latest chunk, on ``time.monotonic``'s clock as the loop's)."""
        self.last = self._loop.time()
        self._waiting = True

    def follow(self, source: Any) -> None:
        """Count from ``source.last`` too (a pump's latest chunk, on the same monotonic clock); None: stop."""
        self._source = source

    def got(self) -> None:
        self._waiting = False

    def _check(self) -> None:
        now = self._loop.time()
        if self._source is not None and self._source.last > self.last:
            self.last = self._source.last
        if self._ends_at is not None and now >= self._ends_at:
            return self._expire("deadline", now)
        first = self._first_s
        if first is not None:
            if now - self.last >= first:
                return self._expire("first_token", now)
            due = self.last + first
        elif self._waiting and now - self.last >= self._limit:
            return self._expire("stall", now)
        else:
            due = (self.last if self._waiting else now) + self._limit
        self._handle = self._loop.call_at(self._cap(due), self._check)

    def _expire(self, why: str, now: float) -> None:
        self.why = why
        self._task.cancel()  # the wait on the replica ends; TimeoutError where the block ends

    def __enter__(self) -> StallWatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._handle.cancel()
        # As asyncio.timeout: this watch's own cancellation (and no other) becomes TimeoutError.
        if self.why is not None and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
