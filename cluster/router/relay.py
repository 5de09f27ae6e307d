"""The router's side of a replica's relay stream (cluster/common/relay_wire.py): a pool of connections.

A :class:`RelayCall` reads like a ``grpc.aio`` server-streaming call, so the
balancer relays either: ``await read()`` gives the next ``OpenAIChunk`` or
``grpc.aio.EOF``, a failure raises :class:`RelayError` with the gRPC
``code()`` and ``details()`` it stands for, ``cancel()`` abandons the call.

Cost per chunk: the event loop's read of the socket (often several frames per
read), the frame split (cluster/router/pump.py, in C by default), one protobuf
parse, and a future's wake-up when the relay was waiting in ``read()``; no
thread, no HTTP/2 framing, no per-chunk timer.  ``pump(pump)`` saves the
wake-up and the parse too: each chunk goes to a :class:`cluster.router.pump.Pump`
inside the connection's callback (it writes it straight to the client's
socket), and the relaying task only wakes when the call ends, fails or the
pump asks for a pause.  Per call: a connection from
the pool (one connect, and one TLS handshake with ``internal_tls``, per pooled
connection, not per call) and one write of the request.

Failure modes: a replica that dies or resets the connection fails the call
with UNAVAILABLE (the balancer retries or migrates it); a cancelled call
closes its connection (the replica aborts the request), so a connection is
only reused after its call ended cleanly (``END`` or ``ERROR``).  A client
slower than the engine makes the chunks pile up here until
:data:`PAUSE_AFTER`, then the socket is paused and TCP's flow control holds
the replica back.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable
from typing import Any

import grpc

from cluster.common.relay_wire import CHUNK, END, ERROR, MAGIC, REQUEST, frame, parse_error
from cluster.proto import replica_pb2
from cluster.router import pump as pumps
from cluster.router import relay_load

EOF = grpc.aio.EOF
#: Chunks held for a call that its relay has not read yet, before the socket is paused.
PAUSE_AFTER = 64
#: Idle connections kept per replica (more are closed when their call ends).
MAX_IDLE = 256

_parse_chunk = replica_pb2.OpenAIChunk.FromString


class RelayError(Exception):
    """A relay call failed; ``code()`` and ``details()`` as ``grpc.aio.AioRpcError`` has them."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class LoadRefused(RelayError):
    """A relay load stream ended before its first report: the replica has none on its relay port (one from before
    ``LOAD`` closes the connection at the unknown frame kind; a ChunkSource without ``load_reports`` answers
    UNIMPLEMENTED), so its load is followed over gRPC instead."""


#: What :meth:`RelayCall.pump` returns when its pump asked to stop for a while (the client's buffer is full).
PAUSED = object()
#: What :meth:`RelayCall.pump` returns when its pump declined the stream's first chunk: :meth:`RelayCall.read` it.
DECLINED = object()


class RelayCall:
    __slots__ = ("_conn", "_done", "_error", "_held", "_paused", "_pending", "_pump_error", "_waiter")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._pending: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: RelayError | None = None
        self._paused = False
        #: What the pump raised in the connection's callback (the client's socket...), for :meth:`pump` to raise.
        self._pump_error: BaseException | None = None
        #: The pump asked for a pause: the socket is paused until the next pump.
        self._held = False

    async def read(self) -> replica_pb2.OpenAIChunk | object:
        while True:
            pending = self._pending
            if pending:
                if self._paused and len(pending) < PAUSE_AFTER // 2:
                    self._paused = False
                    self._conn.resume()
                return _parse_chunk(pending.popleft())
            if self._done:
                if self._error is not None:
                    raise self._error
                return EOF
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def pump(self, pump: pumps.Pump) -> object:
        """Feed each chunk's payload to ``pump`` as it arrives, inside the connection's own callback: no task
        wakes per chunk.  Returns ``EOF`` when the call ended, :data:`PAUSED` when the pump returned False (the
        socket stays paused until the next ``pump``), :data:`DECLINED` when it declined the first chunk (held
        for :meth:`read`); raises :class:`RelayError` when the call failed, or what the pump raised."""
        pending = self._pending
        while pending:
            took = pump.feed(pending[0])
            if took is None:
                return DECLINED
            pending.popleft()
            if not took:
                self._hold()
                return PAUSED
        if self._held or self._paused:
            self._held = self._paused = False
            self._conn.resume()
        if not self._done:
            conn = self._conn
            conn.pump = pump
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
                if conn.pump is pump:
                    conn.pump = None
            if self._pump_error is not None:
                raise self._pump_error
            if self._held:
                return PAUSED
        if pending:  # arrived with the end, after a pause
            return await self.pump(pump)
        if self._error is not None:
            raise self._error
        return EOF

    @property
    def pump_type(self) -> type[pumps.Pump]:
        """The pump that goes with this call's connection (its frame split's twin: C or Python)."""
        return self._conn.pool.pump_type

    def _hold(self) -> None:
        if not self._held:
            self._held = True
            self._conn.pause()

    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """Abandon the call: its connection closes, so the replica aborts the request."""
        if not self._done:
            self._finish(RelayError(grpc.StatusCode.CANCELLED, "cancelled by the router"))
            self._conn.close()

    # ---- called by the connection ----
    def _chunk(self, payload: bytes) -> None:
        """A chunk no pump takes now: held for :meth:`read` or the next :meth:`pump`."""
        self._pending.append(payload)
        if len(self._pending) >= PAUSE_AFTER and not self._paused:
            self._paused = True
            self._conn.pause()
        self._wake()

    def _stop_pump(self, error: BaseException | None) -> None:
        """The pump asked for a pause (``error`` None: the socket is held) or raised ``error``."""
        if error is None:
            self._hold()
        else:
            self._pump_error = error
        self._conn.pump = None
        self._wake()

    def _finish(self, error: RelayError | None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


class _Connection:
    """A relay connection's Python side; the frame split is its base's (cluster/router/pump.py ``FrameProtocol``,
    in C or Python: see :func:`connection_class`)."""

    pump: pumps.Pump | None

    def __init__(self, pool: RelayPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.call: RelayCall | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def _frame(self, kind: int, payload: bytes) -> bool:
        """A frame the pump does not take; False: the connection broke, read no further."""
        call = self.call
        if call is None:
            self._broken("a frame with no call in flight")
            return False
        if kind == CHUNK:
            call._chunk(payload)
        elif kind == END:
            self._end(call, None)
        elif kind == ERROR:
            code, details = parse_error(payload)
            self._end(call, RelayError(relay_load.CODES.get(code, grpc.StatusCode.UNKNOWN), details))
        else:
            self._broken(f"unexpected frame kind {kind}")
            return False
        return True

    def _end(self, call: RelayCall, error: RelayError | None) -> None:
        """The call ended cleanly (``END`` or ``ERROR``): the connection may carry the next one."""
        self.call = self.pump = None  # before the pool may hand it on: no chunk of the next call reaches this pump
        call._finish(error)
        self.pool.release(self)

    def _pump_stopped(self, error: BaseException | None) -> None:
        if self.call is not None:
            self.call._stop_pump(error)
        else:
            self.pump = None

    def _broken(self, why: str) -> None:
        self.pump = None
        if self.call is not None:
            self.call._finish(RelayError(grpc.StatusCode.INTERNAL, f"relay protocol error from {self.pool.address}: {why}"))
            self.call = None
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pump = None
        if self.call is not None:
            why = f"connection to replica {self.pool.address} lost" + (f": {exc}" if exc else "")
            self.call._finish(RelayError(grpc.StatusCode.UNAVAILABLE, why))
            self.call = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


_CLASSES: dict[str, tuple[type[_Connection], type[pumps.Pump]]] = {}


def connection_class(pump: str) -> tuple[type[_Connection], type[pumps.Pump]]:
    """(the relay connection class, the pump class) for ``router.relay_pump`` ("native" or "python")."""
    if pump not in _CLASSES:
        base, pump_type = pumps.implementation(pump)
        conn = type(f"RelayConnection_{pump}", (_Connection, base, asyncio.Protocol), {"__module__": __name__})
        _CLASSES[pump] = (conn, pump_type)
    return _CLASSES[pump]


class RelayPool:
    """Connections to one replica's relay port; each carries one call at a time."""

    def __init__(self, host: str, port: int, ssl: object | None = None, server_hostname: str | None = None, pump: str = "native") -> None:
        self.host, self.port = host, port
        #: The connection class (its frame split in C or Python) and the pump type that goes with it.
        self.connection, self.pump_type = connection_class(pump)
        self.address = f"{host}:{port}"
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._idle: list[_Connection] = []
        self._closed = False

    async def call(self, request: replica_pb2.OpenAIRequest) -> RelayCall:
        """Start ``request`` on a pooled (or new) connection; raises :class:`RelayError` when none can be had."""
        payload = frame(REQUEST, request.SerializeToString())
        conn = None
        while self._idle:
            c = self._idle.pop()
            if not c.closed and c.transport is not None and not c.transport.is_closing():  # the peer may have just left
                conn = c
                break
        if conn is None:
            conn = await self._connect()
            payload = MAGIC + payload
        call = conn.call = RelayCall(conn)
        assert conn.transport is not None
        conn.transport.write(payload)
        return call

    async def _connect(self, factory: Callable[[], Any] | None = None) -> Any:
        """A new connection (a call connection, or ``factory``'s protocol) with the pool's TLS."""
        if self._closed:
            raise RelayError(grpc.StatusCode.UNAVAILABLE, f"replica {self.address} left the endpoint set")
        loop = asyncio.get_running_loop()
        kwargs: dict[str, object] = {}
        if self._ssl is not None:
            kwargs = {"ssl": self._ssl, "server_hostname": self._server_hostname}
        try:
            _, conn = await loop.create_connection(factory or (lambda: self.connection(self)), self.host, self.port, **kwargs)  # type: ignore[arg-type]
        except OSError as exc:  # refused, unreachable, TLS refused (ssl.SSLError is an OSError)
            raise RelayError(grpc.StatusCode.UNAVAILABLE, f"cannot connect to replica {self.address}: {exc}") from None
        return conn

    async def follow_load(self, request: replica_pb2.LoadStreamRequest, on_report: relay_load.OnReport) -> None:
        """The replica's load reports to ``on_report`` over a connection of their own (cluster/router/relay_load.py)
        until it ends; always ends by raising :class:`RelayError` with the cause (:class:`LoadRefused`: the
        replica took the connection but sent no report)."""
        conn = await self._connect(lambda: relay_load.LoadConnection(self.address, on_report))
        code, details = await relay_load.follow_load(conn, request)
        raise (RelayError if conn.reports else LoadRefused)(code, details)

    def release(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.resume()  # its last call may have paused it
        if self._closed or len(self._idle) >= MAX_IDLE:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; calls in flight finish on theirs (closed when they end)."""
        self._closed = True
        for c in self._idle:
            c.close()
        self._idle.clear()
