"""Replicas' load reports over their relay port (cluster/router/relay_load.py), over real sockets on loopback.

What a platform team relies on: every router worker follows every replica's load without paying gRPC's cost per
report, the reports are the replica's own (they move with its traffic), and a replica from before the relay's load
stream is still followed, over gRPC.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from cluster.common.relay_wire import CHUNK, error_frame, frame
from cluster.proto import replica_pb2
from cluster.replica.server import ReplicaServicer
from cluster.router.relay import LoadRefused, RelayPool
from cluster.router.relay_load import LoadConnection
from tests.conftest import wait_for

pytestmark = pytest.mark.asyncio

LONG = {"model": "sim", "prompt": "p", "max_tokens": 2000, "stream": True}


class CountingServicer(ReplicaServicer):
    """A replica that counts the load streams it serves over gRPC."""

    grpc_streams = 0

    async def StreamLoad(self, request, context):  # type: ignore[override]
        CountingServicer.grpc_streams += 1
        async for report in super().StreamLoad(request, context):
            yield report


class ChunksOnly:
    """A replica's relay port from before the load stream: requests only."""

    def __init__(self, servicer: ReplicaServicer) -> None:
        self.servicer = servicer
        self.replica_id = servicer.replica_id
        self.relay_port = servicer.relay_port

    def chunks(self, request):
        return self.servicer.chunks(request)


async def _running_seen(router, http_port: int) -> asyncio.Task:
    """A long stream in flight, once the router's view of the replica's load shows it running."""

    async def stream() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{http_port}/v1/completions", json=LONG) as r:
                async for _ in r.content:
                    pass

    task = asyncio.get_running_loop().create_task(stream())
    handle = router.replicas.by_id["r0"]
    await wait_for(lambda: handle.load is not None and handle.load.running == 1, 10, "the router's view shows the request")
    return task


async def test_a_router_follows_the_replicas_load_over_its_relay_port_not_grpc(sim_fleet):
    CountingServicer.grpc_streams = 0
    router = await sim_fleet.start(1, servicers={0: CountingServicer}, time_scale=1.0)
    handle = router.replicas.by_id["r0"]
    await wait_for(lambda: handle.relay is not None and not handle.load_stale, 5, "a fresh load report")
    task = await _running_seen(router, router.http_port)
    task.cancel()
    await wait_for(lambda: handle.load.running == 0, 10, "the router's view shows the request gone")
    assert CountingServicer.grpc_streams == 0
    assert [c for c in sim_fleet.servers[0].relay.connections if c.load_task is not None]  # the load stream's own connection


async def test_a_replica_without_the_relay_load_stream_is_followed_over_grpc(sim_fleet):
    CountingServicer.grpc_streams = 0
    router = await sim_fleet.start(1, servicers={0: CountingServicer}, time_scale=1.0)
    handle = router.replicas.by_id["r0"]
    await wait_for(lambda: handle.relay is not None and handle.load is not None, 5, "a first load report")
    relay = sim_fleet.servers[0].relay
    relay.servicer = ChunksOnly(sim_fleet.servicers[0])  # as a replica from before the load stream answers
    for c in list(relay.connections):
        c.transport.abort()
    await wait_for(lambda: CountingServicer.grpc_streams == 1, 10, "the router's fallback to gRPC")
    task = await _running_seen(router, router.http_port)  # the gRPC reports are live too
    task.cancel()
    assert not [c for c in relay.connections if c.load_task is not None]
    assert CountingServicer.grpc_streams == 1  # and it stays on gRPC, no reconnect per report


async def test_a_replica_that_closes_the_load_stream_before_any_report_is_a_refusal():
    async def old_replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)  # the magic and the LOAD frame: an unknown kind to it, so it hangs up
        writer.close()

    server = await asyncio.start_server(old_replica, "127.0.0.1", 0)
    pool = RelayPool("127.0.0.1", server.sockets[0].getsockname()[1])
    with pytest.raises(LoadRefused):
        await asyncio.wait_for(pool.follow_load(replica_pb2.LoadStreamRequest(interval_ms=100), lambda r: None), 5)
    server.close()


@pytest.mark.parametrize("cut", [1, 3, 1000])
async def test_load_reports_cut_anywhere_by_the_socket_arrive_whole_and_in_order_then_the_replicas_error(cut):
    got: list[int] = []
    conn = LoadConnection("r", lambda r: got.append(r.running))
    wire = b"".join(frame(CHUNK, replica_pb2.LoadReport(running=i).SerializeToString()) for i in range(1, 6))
    wire += error_frame(14, "draining")  # UNAVAILABLE
    for i in range(0, len(wire), cut):
        conn.data_received(wire[i : i + cut])
    assert got == [1, 2, 3, 4, 5]
    code, details = await conn.ended
    assert code.name == "UNAVAILABLE" and details == "draining"
