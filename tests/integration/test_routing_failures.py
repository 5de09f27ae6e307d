"""Failure handling in the balancer, over real sockets on loopback with injected faults.

A failing replica (every OpenAI call answers UNAVAILABLE), a hung one (its OpenAI call
never sends a token), and the circuit breaker that ejects a replica and probes
it back; each over both ways a router reaches replicas (``router.replica_transport``).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import openai
import pytest

from cluster.replica.errors import CallAborted
from cluster.replica.server import ReplicaServicer

pytestmark = pytest.mark.asyncio


class FailingServicer(ReplicaServicer):
    """Refuses every request before its first token while ``broken``."""

    broken = True

    async def chunks(self, request):  # type: ignore[override]
        if type(self).broken:
            raise CallAborted(grpc.StatusCode.UNAVAILABLE, "injected failure")
        async for chunk in super().chunks(request):
            yield chunk


class HungServicer(ReplicaServicer):
    """Accepts requests and never answers (a wedged engine)."""

    async def chunks(self, request):  # type: ignore[override]
        await asyncio.Event().wait()
        yield  # pragma: no cover


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)


async def stop_and_assert_no_task_leaked(fleet) -> None:
    await fleet.stop()
    fleet.router, fleet.servers, fleet.engines = None, [], []
    await asyncio.sleep(0.05)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not left, left


def _retries(router, reason: str) -> float:
    return router.metrics.value("retries_total", {"model": "sim", "reason": reason})


TRANSPORTS = pytest.mark.parametrize("transport", ["relay", "grpc"])


@TRANSPORTS
async def test_a_replica_that_fails_before_the_first_token_is_retried_on_another(sim_fleet, transport):
    FailingServicer.broken = True
    config = {"circuit_breaker": {"failures": 100}, "replica_transport": transport}
    router = await sim_fleet.start(2, policy="round_robin", servicers={0: FailingServicer}, router=config)
    client = oai(router)
    results = await asyncio.gather(*(client.completions.create(model="sim", prompt=f"p{i}", max_tokens=3) for i in range(10)))
    assert all(r.usage.completion_tokens == 3 for r in results)
    assert router.replicas.by_id["r0"].routed >= 3  # it was tried, and nobody saw its failures
    assert _retries(router, "unavailable") == router.replicas.by_id["r0"].routed
    await stop_and_assert_no_task_leaked(sim_fleet)


@TRANSPORTS
async def test_the_circuit_breaker_ejects_a_failing_replica_and_probes_it_back(sim_fleet, transport):
    FailingServicer.broken = True
    breaker = {"failures": 2, "eject_s": 1.0}
    router = await sim_fleet.start(
        2, policy="round_robin", servicers={0: FailingServicer}, router={"circuit_breaker": breaker, "replica_transport": transport}
    )
    client = oai(router)
    bad = router.replicas.by_id["r0"]
    for i in range(6):
        await client.completions.create(model="sim", prompt=f"a{i}", max_tokens=2)
    assert router.balancer.breaker.is_open(bad)
    assert router.metrics.value("circuit_ejections_total", {"model": "sim"}) >= 1
    tried = bad.routed
    for i in range(10):
        await client.completions.create(model="sim", prompt=f"b{i}", max_tokens=2)
    assert bad.routed == tried  # ejected: no request went there
    router.metrics.refresh_replica_gauges(router.replicas.by_model)
    assert router.metrics.value("replicas_healthy", {"model": "sim"}) == 1
    FailingServicer.broken = False  # it recovers
    await asyncio.sleep(1.1)
    for i in range(10):
        await client.completions.create(model="sim", prompt=f"c{i}", max_tokens=2)
    assert bad.routed > tried + 2  # probed, then back in the rotation
    assert not router.balancer.breaker.is_open(bad) and bad.circuit.failures == 0 and bad.circuit.ejections == 0
    await stop_and_assert_no_task_leaked(sim_fleet)


@pytest.mark.slow
@TRANSPORTS
async def test_a_hung_replica_does_not_delay_requests_to_healthy_ones(sim_fleet, transport):
    config = {"first_token_timeout_s": 1.0, "replica_transport": transport}
    router = await sim_fleet.start(2, policy="round_robin", servicers={0: HungServicer}, router=config)
    client = oai(router)

    async def one(i: int) -> float:
        t0 = time.monotonic()
        r = await client.completions.create(model="sim", prompt=f"p{i}", max_tokens=2)
        assert r.usage.completion_tokens == 2
        return time.monotonic() - t0

    latencies = sorted(await asyncio.gather(*(one(i) for i in range(10))))
    # Round robin sent the first half to the hung replica: those waited the
    # first-token timeout and were retried on the healthy one; the rest never
    # waited on the hung replica at all.
    fast = [t for t in latencies if t < 0.8]
    assert len(fast) >= 4, latencies
    assert latencies[-1] < 1.0 + 3.0, latencies
    assert _retries(router, "first_token_timeout") >= 1
    # The hung replica's requests were cancelled there, not left to pile up.
    await asyncio.sleep(0.1)
    assert router.replicas.by_id["r0"].in_flight == 0
    await stop_and_assert_no_task_leaked(sim_fleet)
