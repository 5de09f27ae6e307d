"""A small open-loop driver over a :class:`Client`, for tests and the soak run.

Requests are sent at Poisson arrival times whether or not earlier ones have
finished (so overload is real overload, not a closed loop that slows down with
the server), each bounded by ``timeout_s`` (recorded as error ``timeout``).
The full runner (:mod:`loadtests.runner`) is the tool for benchmarks; this one
is for scripted phases inside one event loop (warm-up, a flood beside a steady
tenant, a long soak with periodic checks).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from loadtests.clients.base import Client, RequestResult
from loadtests.workloads import RequestSpec


async def open_loop(
    client: Client,
    model: str,
    *,
    rate: float,
    duration_s: float,
    spec: Callable[[int], RequestSpec],
    timeout_s: float = 30.0,
    seed: int = 0,
) -> list[RequestResult]:
    """Send Poisson(rate) arrivals for ``duration_s``; return every request's result once all have ended."""
    rng = random.Random(seed)
    client.origin = time.perf_counter()
    results: list[RequestResult] = []
    tasks: set[asyncio.Task] = set()

    async def one(i: int, at: float) -> None:
        r = RequestResult(index=i, scheduled_s=at)
        results.append(r)
        try:
            await asyncio.wait_for(client.send(spec(i), model, r), timeout_s)
        except TimeoutError:
            r.fail("timeout", f"no answer within {timeout_s} s")

    t = 0.0
    i = 0
    start = time.perf_counter()
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.get_running_loop().create_task(one(i, t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.gather(*tasks)
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
