"""The per-stream stall watchdog: a silent replica is caught, a slow client is not."""

import asyncio

import pytest

from cluster.router.stall import StallWatch


async def relay(gaps: list[float], hold_s: float, limit_s: float) -> int:
    """Relay chunks that arrive after ``gaps`` seconds each, the caller holding each ``hold_s``; returns chunks got."""
    got = 0
    async with asyncio.timeout(None) as tm:
        watch = StallWatch(tm, limit_s)
        try:
            for gap in gaps:
                watch.waiting()
                await asyncio.sleep(gap)  # waiting on the replica
                watch.got()
                got += 1
                await asyncio.sleep(hold_s)  # the caller holds the chunk
        finally:
            watch.close()
    return got


async def test_a_replica_silent_longer_than_the_limit_stalls_the_stream():
    with pytest.raises(TimeoutError):
        await relay([0.01, 0.01, 0.5], hold_s=0.0, limit_s=0.15)


async def test_a_slow_client_holding_every_chunk_never_counts_as_a_stall():
    assert await relay([0.01] * 6, hold_s=0.1, limit_s=0.05) == 6


async def test_many_short_gaps_adding_up_past_the_limit_are_no_stall():
    assert await relay([0.03] * 10, hold_s=0.0, limit_s=0.1) == 10
