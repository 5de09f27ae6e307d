"""The per-stream stall watchdog: a silent replica is caught, a slow client is not."""

import asyncio
import time

import pytest

from cluster.router.stall import StallWatch


async def relay(gaps: list[float], hold_s: float, limit_s: float) -> int:
    """Relay chunks that arrive after ``gaps`` seconds each, the caller holding each ``hold_s``; returns chunks got."""
    got = 0
    with StallWatch(limit_s) as watch:
        for gap in gaps:
            watch.waiting()
            await asyncio.sleep(gap)  # waiting on the replica
            watch.got()
            got += 1
            await asyncio.sleep(hold_s)  # the caller holds the chunk
    return got


async def test_a_replica_silent_longer_than_the_limit_stalls_the_stream():
    with pytest.raises(TimeoutError):
        await relay([0.01, 0.01, 0.5], hold_s=0.0, limit_s=0.15)


async def test_a_slow_client_holding_every_chunk_never_counts_as_a_stall():
    assert await relay([0.01] * 6, hold_s=0.1, limit_s=0.05) == 6


async def test_many_short_gaps_adding_up_past_the_limit_are_no_stall():
    assert await relay([0.03] * 10, hold_s=0.0, limit_s=0.1) == 10


async def _expiry(first_s: float | None, ends_in: float | None, first_chunk_after: float, limit_s: float = 10.0) -> str | None:
    """Wait ``first_chunk_after`` s for a first chunk, then 0.3 s more on the replica; the watch's reason if it expired."""
    loop = asyncio.get_running_loop()
    ends_at = None if ends_in is None else loop.time() + ends_in
    watch = None
    try:
        with StallWatch(limit_s, first_s, ends_at) as watch:
            await asyncio.sleep(first_chunk_after)
            watch.started()
            watch.waiting()
            await asyncio.sleep(0.3)
    except TimeoutError:
        return watch.why
    return None


async def test_one_watch_times_the_first_token_the_stall_and_the_deadline():
    assert await _expiry(first_s=0.05, ends_in=None, first_chunk_after=1.0) == "first_token"
    assert await _expiry(first_s=1.0, ends_in=0.05, first_chunk_after=1.0) == "deadline"  # the deadline comes first
    assert await _expiry(first_s=0.2, ends_in=None, first_chunk_after=0.01, limit_s=0.1) == "stall"
    assert await _expiry(first_s=0.2, ends_in=0.15, first_chunk_after=0.01) == "deadline"  # mid-stream
    assert await _expiry(first_s=0.2, ends_in=None, first_chunk_after=0.01) is None


async def _pumped(follow: bool, limit_s: float = 0.1) -> int:
    """A pump that keeps the time of its latest chunk itself (``last``), one chunk every 30 ms for 0.3 s."""

    class Pump:
        last = time.monotonic()

    pump, got = Pump(), 0
    with StallWatch(limit_s) as watch:
        if follow:
            watch.follow(pump)
        watch.waiting()
        for _ in range(10):
            await asyncio.sleep(0.03)
            pump.last = time.monotonic()
            got += 1
    return got


async def test_a_pumped_stream_with_steady_chunks_outlives_the_stall_limit_and_a_silent_one_does_not():
    assert await _pumped(follow=True) == 10
    with pytest.raises(TimeoutError):
        await _pumped(follow=False)  # the watch sees no chunk: a stall


async def test_a_cancellation_from_outside_stays_a_cancellation_and_a_watch_leaves_no_timer_behind():
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(relay([5.0], hold_s=0.0, limit_s=10.0))
    await asyncio.sleep(0.05)
    task.cancel()  # the client left: not a stall, not a timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    with StallWatch(0.05) as watch:
        watch.waiting()  # on the replica: were its timer left running, it would cancel this task at 0.05 s
    await asyncio.sleep(0.15)  # its timer is cancelled with the block: nothing fires after it
    assert watch.why is None and asyncio.current_task().cancelling() == 0 and not loop.is_closed()


async def test_a_watch_expiring_inside_an_outer_timeout_leaves_the_outer_one_working():
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            with pytest.raises(TimeoutError):
                await relay([1.0], hold_s=0.0, limit_s=0.05)  # the watch's stall
            await asyncio.sleep(1.0)  # then the outer timeout's own expiry
    assert asyncio.current_task().cancelling() == 0
