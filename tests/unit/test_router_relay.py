"""The router's side of the relay stream (cluster/router/relay.py): its connection splits frames itself (in C or in
Python, cluster/router/pump.py), so what the replica's socket delivers in any cut must come out as the same chunks,
in order, and then the end, with either."""

from __future__ import annotations

import asyncio

import pytest

from cluster.common.relay_wire import CHUNK, END, frame
from cluster.proto import replica_pb2
from cluster.router.relay import EOF, RelayCall, RelayError, RelayPool
from cluster.router.replicas import split_address


def _chunks(texts: list[str]) -> bytes:
    frames = [frame(CHUNK, replica_pb2.OpenAIChunk(data=t.encode(), token_ids=[i]).SerializeToString()) for i, t in enumerate(texts)]
    return b"".join(frames) + frame(END)


async def _read_all(call: RelayCall) -> list[bytes]:
    """Every chunk until the end; a call that never ends fails the test (within 5 s) rather than hanging it."""
    out = []
    async with asyncio.timeout(5):
        while (c := await call.read()) is not EOF:
            out.append(c.data)
    return out


PUMPS = ["native", "python"]


@pytest.mark.parametrize("pump", PUMPS)
@pytest.mark.parametrize("cut", [1, 2, 5, 7, 1000])
def test_chunks_cut_anywhere_by_the_socket_reach_the_call_whole_and_in_order(cut, pump):
    texts = ["", "a", "hello ", "x" * 300]
    wire = _chunks(texts)
    pool = RelayPool("127.0.0.1", 1, pump=pump)
    conn = pool.connection(pool)
    calls = []
    for _ in range(2):  # two calls, one after the other, on one connection
        if calls:  # as RelayPool.call takes it
            assert pool._idle.pop() is conn
        conn.call = RelayCall(conn)
        calls.append(conn.call)
        for i in range(0, len(wire), cut):
            conn.data_received(wire[i : i + cut])
    for call in calls:
        assert asyncio.run(_read_all(call)) == [t.encode() for t in texts]
    assert conn.call is None and pool._idle == [conn]  # the call ended; the connection is back in its pool


@pytest.mark.parametrize("pump", PUMPS)
def test_a_frame_header_that_is_no_relay_frame_fails_the_call_instead_of_hanging_it(pump):
    pool = RelayPool("127.0.0.1", 1, pump=pump)
    conn = pool.connection(pool)
    call = conn.call = RelayCall(conn)
    conn.data_received(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(RelayError, match="bad frame header"):
        asyncio.run(_read_all(call))


@pytest.mark.parametrize(("address", "want"), [("10.0.0.7:50051", ("10.0.0.7", 50051)), ("[fd00::1]:7000", ("fd00::1", 7000))])
def test_a_replica_address_splits_into_host_and_port_ipv6_included(address, want):
    assert split_address(address) == want
