"""The router-overhead benchmark's systems relay what they are sent: a figure per request or per token of a
system that drops tokens or fails requests would be a wrong figure, printed as a right one."""

from __future__ import annotations

import pytest

from loadtests.bench import router_overhead as ro
from loadtests.procs import running

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_the_python_floor_relays_every_token_of_every_stream():
    with running() as procs:
        backends = [ro.start_backend(procs, 0.0) for _ in range(2)]
        url, _ = ro.start_floor(procs, [g for g, _, _ in backends])
        for tokens in (16, 256):
            run = ro.Run()
            await ro.closed_loop([url], 8, tokens, 1.0, run)
            assert run.requests > 8 and run.errors == 0
            assert run.tokens == tokens * run.requests
