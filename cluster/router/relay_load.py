"""A replica's load reports over its relay port (``LOAD``, cluster/common/relay_wire.py), not gRPC's ``StreamLoad``.

Every router worker follows every replica's load stream (ten reports a
second).  Over ``grpc.aio`` each report cost a worker about 0.3 ms of CPU (an
idle router with two workers and two replicas spent 19 ms/s, 11.5 of them on
reports); here a report is a socket read on the event loop, a frame split and
one protobuf parse.

Spec: :func:`follow_load` opens a connection of its own (not one of the
pool's call connections, with the pool's TLS), sends ``LOAD`` and hands each
``LoadReport`` to ``on_report`` until the connection ends; it then returns
the gRPC code and details that ended it (UNAVAILABLE for a lost connection,
the replica's code for an ``ERROR`` frame, UNIMPLEMENTED from a replica
without the load stream on its relay port), which ``RelayPool.follow_load``
raises as a ``RelayError``.  Cancelling it closes the connection.

Failure modes: a replica from before ``LOAD`` refuses the frame kind and
closes the connection before any report (``RelayPool.follow_load`` raises
``LoadRefused``); the caller then follows that replica over gRPC until its
gRPC stream breaks (cluster/router/replicas.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from cluster.common.relay_wire import CHUNK, ERROR, LOAD, MAGIC, FrameReader, ProtocolError, frame, parse_error
from cluster.proto import replica_pb2

#: The gRPC status codes by value, as an ``ERROR`` frame carries them.
CODES = {c.value[0]: c for c in grpc.StatusCode}
OnReport = Callable[[replica_pb2.LoadReport], None]


class LoadConnection(asyncio.Protocol):
    """One load stream: reports go to ``on_report``; ``ended`` gets the (gRPC code, details) that ended it."""

    def __init__(self, address: str, on_report: OnReport) -> None:
        self.address, self.on_report = address, on_report
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[tuple[grpc.StatusCode, str]] = asyncio.get_running_loop().create_future()
        #: Reports received (none before the end: the replica has no load stream on its relay port).
        self.reports = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for kind, payload in self.reader.feed(data):
                if kind == CHUNK:
                    self.reports += 1
                    self.on_report(replica_pb2.LoadReport.FromString(payload))
                elif kind == ERROR:
                    code, details = parse_error(payload)
                    return self._end(CODES.get(code, grpc.StatusCode.UNKNOWN), details)
                else:
                    raise ProtocolError(f"unexpected frame kind {kind} on a load stream")
        except (ProtocolError, DecodeError) as exc:
            self._end(grpc.StatusCode.INTERNAL, f"load stream from {self.address}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(grpc.StatusCode.UNAVAILABLE, f"load stream from {self.address} lost" + (f": {exc}" if exc else ""))

    def _end(self, code: grpc.StatusCode, details: str) -> None:
        if not self.ended.done():
            self.ended.set_result((code, details))
        if self.transport is not None:
            self.transport.close()


async def follow_load(conn: LoadConnection, request: replica_pb2.LoadStreamRequest) -> tuple[grpc.StatusCode, str]:
    """Ask ``conn`` (just connected) for the load stream; returns what ended it (closes it when cancelled)."""
    assert conn.transport is not None
    conn.transport.write(MAGIC + frame(LOAD, request.SerializeToString()))
    try:
        return await conn.ended
    finally:
        conn.transport.close()
