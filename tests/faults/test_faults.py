"""Fault injection under load: a replica killed mid-stream, a dropped connection, a slow replica.

Real parts: sim replicas behind their own gRPC servers (as separate processes
where a process is killed), the router in-process over loopback, clients over
both public APIs.  Every scenario checks the same promises: each request ends
within its deadline; no accepted request is lost (it completes, is migrated,
or ends with a clear error); migrated streams are continuous and complete
(token for token what an undisturbed run produces).  Each prints its counts
(``pytest -s``): sent, completed, migrated, refused, failed, lost.
"""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest

from cluster.client import build_request
from cluster.proto import inference_pb2_grpc
from cluster.router.app import Router
from loadtests.procs import Procs, start_sim_replica
from tests.faults.driver import judge, run_load
from tests.faults.fleet import CuttableProxy, LocalReplicas, make_router, streaming, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


async def test_killing_a_replica_process_mid_stream_loses_no_request():
    procs = Procs()
    try:
        addresses = await asyncio.gather(*(asyncio.to_thread(start_sim_replica, procs, "{time_scale: 0.2}") for _ in range(3)))
        router = make_router(list(addresses))
        await router.start()
        victim = router.replicas.by_id["r0"]
        outcomes: list = []
        load = asyncio.create_task(run_load(router.grpc_port, router.http_port, concurrency=12, requests=150, progress=outcomes))
        # Kill the process while streams are relaying through it.
        await wait_until(lambda: victim.in_flight >= 3 and len(outcomes) > 20, 30)
        await asyncio.sleep(0.1)  # past their first tokens (a stream lasts ~0.3 s)
        on_victim = victim.in_flight
        os.kill(procs.procs[0].pid, signal.SIGKILL)
        await load
        tally = await judge(outcomes, router.balancer.migrations)
        print("\n" + tally.line("replica killed mid-stream") + f" (in flight on the victim: {on_victim})")
        await router.stop(0.5)
    finally:
        procs.stop()
    assert tally.lost == 0, tally.lost_examples
    assert tally.refused == tally.failed == 0, tally.errors[:5]  # two replicas were left: everything survives
    assert tally.completed == tally.sent == 150
    assert on_victim >= 1 and tally.migrated >= 1  # the streams on the victim moved on


async def test_a_frozen_replica_process_is_detected_mid_stream_and_its_streams_migrated():
    procs = Procs()
    try:
        addresses = await asyncio.gather(*(asyncio.to_thread(start_sim_replica, procs, "{time_scale: 0.2}") for _ in range(3)))
        # SIGSTOP: connections stay open and silent, as with a hung engine or a
        # partition that drops packets; only the stall timeout can tell.
        router = make_router(list(addresses), stall_timeout_s=1.0, first_token_timeout_s=1.0)
        await router.start()
        victim = router.replicas.by_id["r0"]
        outcomes: list = []
        load = asyncio.create_task(run_load(router.grpc_port, router.http_port, concurrency=12, requests=120, progress=outcomes))
        await wait_until(lambda: victim.in_flight >= 3 and len(outcomes) > 20, 30)
        await asyncio.sleep(0.1)  # past their first tokens
        os.kill(procs.procs[0].pid, signal.SIGSTOP)
        await load
        tally = await judge(outcomes, router.balancer.migrations)
        print("\n" + tally.line("replica frozen mid-stream"))
        await router.stop(0.5)
    finally:
        procs.procs[0].kill()
        procs.stop()
    assert tally.lost == 0, tally.lost_examples
    assert tally.refused == tally.failed == 0, tally.errors[:5]
    assert tally.completed == tally.sent and tally.migrated >= 1
    # Each stall costs its stream about a second, not its whole deadline.
    assert max(o.elapsed_s for o in outcomes) < 10


@pytest.mark.parametrize("transport", ["relay", "grpc"])
async def test_a_dropped_connection_mid_stream_is_migrated_and_frees_the_replica_slot(transport):
    local = LocalReplicas()
    proxy: CuttableProxy | None = None
    relay_proxy: CuttableProxy | None = None
    try:
        first = await local.add()
        proxy, relay_proxy = CuttableProxy(first), CuttableProxy(local.relay_addresses[0])
        addresses = [await proxy.start(), await local.add(), await local.add()]
        router = make_router(addresses, relay={0: await relay_proxy.start()}, replica_transport=transport)
        await router.start()
        outcomes: list = []
        load = asyncio.create_task(run_load(router.grpc_port, router.http_port, concurrency=12, requests=150, progress=outcomes))
        for _ in range(3):  # three network faults during the run
            await wait_until(lambda: streaming(local.engines[0]) >= 2 or load.done(), 30)
            if load.done():
                break
            proxy.cut()
            relay_proxy.cut()
            await asyncio.sleep(0.3)
        await load
        tally = await judge(outcomes, router.balancer.migrations)
        print("\n" + tally.line("connection dropped") + f" (cuts: {proxy.cuts})")
        # The replica behind the cut connection noticed its client was gone and freed the slots.
        await wait_until(lambda: local.busy() == 0, 5)
        assert all(not s.in_flight for s in local.servicers)
        await router.stop(0.5)
    finally:
        for p in (proxy, relay_proxy):
            if p is not None:
                await p.stop()
        await local.stop()
    assert tally.lost == 0, tally.lost_examples
    assert tally.refused == tally.failed == 0, tally.errors[:5]
    assert tally.completed == tally.sent
    assert proxy.cuts >= 1 and tally.migrated >= 2


async def test_a_slow_replica_delays_no_request_past_its_deadline():
    local = LocalReplicas()
    try:
        # r0 is 25 times slower than the others: a 40-token stream on it takes ~7 s.
        addresses = [await local.add(time_scale=5.0), await local.add(), await local.add()]
        router = make_router(addresses, policy="power_of_two", timeout_s=3.0)  # HTTP requests' deadline
        await router.start()
        outcomes = await run_load(router.grpc_port, router.http_port, concurrency=12, requests=120, deadline_s=3.0)
        tally = await judge(outcomes, router.balancer.migrations)
        print("\n" + tally.line("slow replica"))
        # Requests cut off by their deadline were aborted on the slow replica too.
        await wait_until(lambda: local.busy() == 0, 5)
        await router.stop(0.5)
    finally:
        await local.stop()
    assert tally.lost == 0, tally.lost_examples
    assert max(o.elapsed_s for o in outcomes) < 3.0 + 1.0
    # Whatever did not complete ended with a clear deadline error, not a hang or a reset.
    assert all("DEADLINE_EXCEEDED" in e or "HTTP 504" in e or "SSE 504" in e for e in tally.errors), tally.errors[:5]
    assert tally.completed >= 0.8 * tally.sent  # power of two keeps most traffic off the slow replica


async def _stream_and_kill(local: LocalReplicas, router: Router, kill_after: int) -> tuple[list, BaseException | None]:
    """One seeded gRPC stream; the server of the replica relaying it stops after ``kill_after`` chunks."""
    chunks: list = []
    req = build_request("a story please", model="sim", chat=True, max_tokens=30, seed=7)
    req.sampling.temperature = 0.8
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        try:
            async for c in inference_pb2_grpc.InferenceStub(ch).Generate(req, timeout=20):
                chunks.append(c)
                if len(chunks) == kill_after:
                    busy = next(i for i, h in enumerate(router.replicas.by_id.values()) if h.in_flight)
                    await local.servers[busy].stop(0)
        except grpc.aio.AioRpcError as exc:
            return chunks, exc
    return chunks, None


async def test_a_migrated_stream_is_the_undisturbed_stream_with_the_same_usage():
    local = LocalReplicas()
    try:
        router = make_router([await local.add(), await local.add()])
        await router.start()
        undisturbed, _ = await _stream_and_kill(local, router, kill_after=0)
        chunks, error = await _stream_and_kill(local, router, kill_after=8)
        await router.stop(0.5)
    finally:
        await local.stop()
    assert error is None
    assert router.balancer.migrations == 1
    assert [t for c in chunks for t in c.token_ids] == [t for c in undisturbed for t in c.token_ids]
    assert "".join(c.text for c in chunks) == "".join(c.text for c in undisturbed)
    assert [c.finish_reason for c in chunks].count("length") == 1 and chunks[-1].finish_reason == "length"
    # Usage describes the whole request, as if nothing had happened.
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        undisturbed[-1].usage.prompt_tokens,
        undisturbed[-1].usage.completion_tokens,
    )


async def test_with_migration_off_a_mid_stream_failure_ends_with_a_clear_error():
    local = LocalReplicas()
    try:
        router = make_router([await local.add(), await local.add()])
        router.balancer.max_migrations = 0
        await router.start()
        chunks, error = await _stream_and_kill(local, router, kill_after=5)
        await router.stop(0.5)
    finally:
        await local.stop()
    assert len(chunks) == 5 and not chunks[-1].finish_reason
    assert isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "mid-stream" in error.details()
