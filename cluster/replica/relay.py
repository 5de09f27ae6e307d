"""The replica's relay stream: its OpenAI call on plain TCP frames (cluster/common/relay_wire.py).

Served beside the gRPC port, over the same :class:`ReplicaServicer` (same
chunks, same draining, same in-flight accounting); ``Health`` names its port
(``relay_port``) so routers find it.  Each connection is one
:class:`asyncio.Protocol`: frames are parsed as the bytes arrive, a request
runs on its own task, each chunk is one ``transport.write`` (no extra
buffering: a chunk goes out the moment the engine yields it), and the task
waits only when the socket's buffer is full (the router reads slower than the
engine writes).  A closed connection cancels its call, which aborts the
request in the engine, as a cancelled gRPC call does.  A connection that asks
for ``LOAD`` gets the servicer's load reports (``load_reports``, what
``StreamLoad`` yields) until it closes; that stream holds no call, so
:meth:`RelayServer.close` does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from cluster.common.relay_wire import CHUNK, END, LOAD, MAGIC, REQUEST, FrameReader, ProtocolError, error_frame, frame
from cluster.config import InternalTLSConfig
from cluster.proto import replica_pb2
from cluster.replica.errors import CallAborted
from cluster.tls import replica_server_ssl_context


class ChunkSource(Protocol):
    """What the relay serves: a :class:`cluster.replica.server.ReplicaServicer` (or a benchmark's null replica)."""

    replica_id: str
    #: Set by the relay server when it listens, for ``Health``.
    relay_port: int

    def chunks(self, request: replica_pb2.OpenAIRequest) -> AsyncIterator[replica_pb2.OpenAIChunk]: ...

    # Optional: ``load_reports(LoadStreamRequest) -> AsyncIterator[LoadReport]``; without it ``LOAD`` is UNIMPLEMENTED.


log = logging.getLogger(__name__)

_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]


class _Connection(asyncio.Protocol):
    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        #: The load stream's task, when this connection asked for ``LOAD`` (no call: close() does not wait on it).
        self.load_task: asyncio.Task[None] | None = None
        self._greeting = b""
        self._greeted = False
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._greeted:
            self._greeting += data
            if len(self._greeting) < len(MAGIC):
                return
            if not self._greeting.startswith(MAGIC):
                return self._refuse("not a relay client")
            data, self._greeted = self._greeting[len(MAGIC) :], True
        try:
            frames = self.reader.feed(data)
        except ProtocolError as exc:
            return self._refuse(str(exc))
        for kind, payload in frames:
            if self.task is not None or self.load_task is not None or kind not in (REQUEST, LOAD):
                return self._refuse(f"unexpected frame kind {kind}")
            loop = asyncio.get_running_loop()
            if kind == REQUEST:
                self.task = loop.create_task(self._serve(payload))
            else:
                self.load_task = loop.create_task(self._serve_load(payload))

    def _refuse(self, why: str) -> None:
        log.warning("relay connection refused", extra={"replica": self.server.servicer.replica_id, "error": why})
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.task is not None:
            self.task.cancel()  # the router went away or cancelled: abort the request in the engine
        if self.load_task is not None:
            self.load_task.cancel()
        self._wake()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()

    def _wake(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def _serve(self, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        write = transport.write
        servicer = self.server.servicer
        try:
            try:
                request = replica_pb2.OpenAIRequest.FromString(payload)
            except DecodeError as exc:
                write(error_frame(_INVALID, f"the relay request is no OpenAIRequest: {exc}"))
                return
            async with contextlib.aclosing(servicer.chunks(request)) as chunks:
                async for out in chunks:
                    write(frame(CHUNK, out.SerializeToString()))
                    if self._writable is not None:
                        await self._writable
            write(frame(END))
        except CallAborted as exc:
            write(error_frame(exc.code.value[0], exc.message))
        except Exception as exc:  # the engine's bug, not the client's: the router retries or migrates
            log.exception("relay call failed", extra={"replica": servicer.replica_id})
            if not transport.is_closing():
                write(error_frame(_INTERNAL, f"replica {servicer.replica_id}: {exc!r}"[:2000]))
        finally:
            self.task = None

    async def _serve_load(self, payload: bytes) -> None:
        """The servicer's load reports, a ``CHUNK`` each, until the router closes the connection."""
        transport = self.transport
        assert transport is not None
        reports = getattr(self.server.servicer, "load_reports", None)
        try:
            request = replica_pb2.LoadStreamRequest.FromString(payload)
        except DecodeError as exc:
            transport.write(error_frame(_INVALID, f"the load request is no LoadStreamRequest: {exc}"))
            return
        if reports is None:
            transport.write(error_frame(_UNIMPLEMENTED, "this replica serves its load stream over gRPC only"))
            return
        try:
            async with contextlib.aclosing(reports(request)) as stream:
                async for report in stream:
                    if transport.is_closing():
                        return
                    transport.write(frame(CHUNK, report.SerializeToString()))
        except Exception as exc:
            log.exception("relay load stream failed", extra={"replica": self.server.servicer.replica_id})
            if not transport.is_closing():
                transport.write(error_frame(_INTERNAL, f"replica {self.server.servicer.replica_id}: {exc!r}"[:2000]))


class RelayServer:
    """The listening socket and its connections; :meth:`close` ends them all."""

    def __init__(self, servicer: ChunkSource) -> None:
        self.servicer = servicer
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "0.0.0.0", port: int = 0, tls: InternalTLSConfig | None = None) -> int:
        loop = asyncio.get_running_loop()
        ssl = replica_server_ssl_context(tls)
        self.server = await loop.create_server(lambda: _Connection(self), host, port, ssl=ssl, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self.servicer.relay_port = self.port
        return self.port

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop listening; calls still running get ``grace_s`` to finish, then their connections are cut."""
        self.servicer.relay_port = 0
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(c.task is not None for c in self.connections) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
