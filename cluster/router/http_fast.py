"""The public HTTP port's fast path: the two hot routes served without aiohttp's per-request machinery.

Every connection to the HTTP port starts here (:class:`FastFront`, an
``asyncio.Protocol``).  A request for ``POST /v1/chat/completions`` or
``POST /v1/completions`` with an ordinary HTTP/1.1 head (a ``Content-Length``
body, no ``Transfer-Encoding``, ``Expect``, ``Upgrade``, ``Content-Encoding``,
``Connection`` other than keep-alive, no query string) is served here through
the same :meth:`OpenAIServer.relay` as aiohttp's route (gate, validation,
balancer, the SSE pump), with the same status codes, error JSON and headers.
Anything else — another route, a body over ``router.max_body_bytes``, a head
``httptools`` (llhttp, as aiohttp's own parser) refuses, HTTP/1.0 — is handed
to aiohttp: at that request's boundary, once the answers before it are
written, the connection's transport is given to a fresh aiohttp protocol
(``transport.set_protocol``) and the bytes from that request on are replayed
to it, so from then on the connection is aiohttp's, as it always was.  TLS is
under both alike (the transport is the TLS one).

An ordinary head is read in C (``cluster/router/_http_head.c``, built at
install, optional): a strict subset of HTTP/1.1 it answers exactly as llhttp
would, and ``None`` for anything else, which llhttp then parses as before.

Why: aiohttp's request, response, router, middleware and writer objects cost
about as much CPU per request as a Rust gateway's whole relay (see
docs/routing.md, router overhead).  Here a request costs a head parse in C,
a dict of the few headers the router reads, and one write of the answer's head
with its first bytes.

Spec: requests on one connection are answered in order (pipelining), one at a
time, by one task per connection; a client that disconnects cancels its
request's task (the replica call is cancelled, the engine aborts); an idle
keep-alive connection is closed after aiohttp's own keep-alive timeout.

Failure modes: an exception in the relay answers 500 ``internal error`` (as
aiohttp's error middleware does) before the headers, or closes the connection
after them.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httptools
from aiohttp.http import SERVER_SOFTWARE

from cluster.router.http_reply import SINK_HIGH, SseSink, error_body
from cluster.router.validation import CHAT, COMPLETIONS

log = logging.getLogger(__name__)

HOT = {b"/v1/chat/completions": CHAT, b"/v1/completions": COMPLETIONS}
#: The headers the router reads (lower case), and those that send a request to aiohttp.
WANTED = frozenset((b"authorization", b"x-request-id", b"x-session-id", b"x-routing-policy"))
UNUSUAL = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"content-encoding"))
try:
    from cluster.router import _http_head  # type: ignore[attr-defined]

    _http_head.configure(HOT, WANTED, UNUSUAL)
    _c_head: Callable[[bytes], tuple[str, dict[str, str], int] | None] | None = _http_head.head
except ImportError:  # built without a C compiler: llhttp alone
    _c_head = None
#: A head longer than this goes to aiohttp (which answers 431 / 400 as it always did).
MAX_HEAD = 8190
#: aiohttp's own keep-alive timeout (``RequestHandler``'s default), and how often idle connections are swept.
KEEPALIVE_S, SWEEP_S = 3630.0, 60.0
_HANDOVER = object()
_PHRASES = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_SSE_HEAD = b"Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
_JSON = (b"Content-Type: application/json\r\n", b"Content-Type: application/json; charset=utf-8\r\n")


class _Date:
    """The ``Date`` and ``Server`` lines, formatted once a second."""

    second = -1
    line = b""

    @classmethod
    def lines(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.line = f"Date: {formatdate(now, usegmt=True)}\r\nServer: {SERVER_SOFTWARE}\r\n".encode()
        return cls.line


_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in _PHRASES.items()}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _sse_head(status: int) -> bytes:
    """An SSE response's head, its empty line included (the body is chunked)."""
    return _status_line(status) + _SSE_HEAD + _Date.lines() + b"\r\n"


class _Head:
    """httptools' callbacks for one request head: the method, path and the few headers the router reads."""

    __slots__ = ("headers", "length", "odd", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.length = -1
        self.odd = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in WANTED:
            self.headers.setdefault(name.decode(), value.decode("utf-8", "surrogateescape"))  # as aiohttp decodes them
        elif name == b"content-length":
            if self.length >= 0 or not value.isdigit():
                self.odd = True
            self.length = int(value) if value.isdigit() else -1
        elif name in UNUSUAL or (name == b"connection" and value.lower() != b"keep-alive"):
            self.odd = True


def parse_head(head: bytes) -> tuple[str, dict[str, str], int] | None:
    """(endpoint, headers, body length) of a hot request's head (ending in an empty line); None: aiohttp's."""
    if _c_head is not None:
        ordinary = _c_head(head)  # an ordinary head's answer, without a Python call per header
        if ordinary is not None:
            return ordinary
    return parse_head_llhttp(head)


def parse_head_llhttp(head: bytes) -> tuple[str, dict[str, str], int] | None:
    """:func:`parse_head` by llhttp's callbacks: every head the C reader is not sure of (and its statement)."""
    h = _Head()
    parser = httptools.HttpRequestParser(h)
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:  # llhttp's refusal (upgrade included): aiohttp answers it as it always did
        return None
    if h.odd or h.length < 0 or parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
        return None
    endpoint = HOT.get(h.url)
    return None if endpoint is None else (endpoint, h.headers, h.length)


class FastReply:
    """:class:`cluster.router.http_reply.Reply` on the connection's transport, framed as aiohttp frames it."""

    __slots__ = ("_sink", "_status", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._status = 0
        #: The stream's sink: ``prepare``'s (its head the pump's to write), then ``start``'s if the first chunk came here.
        self._sink: SseSink | None = None

    @property
    def status(self) -> int:
        """The answer's status once given: also 200 once the pump wrote a prepared sink's head."""
        p = self._sink
        return self._status or (200 if p is not None and p.head is None else 0)

    @status.setter
    def status(self, value: int) -> None:
        self._status = value

    def prepare(self) -> SseSink:
        self._sink = SseSink(self.transport, True, _sse_head(200), ends=True)
        return self._sink

    def answer(self, status: int, body: bytes, charset: bool = True, headers: dict[str, str] | None = None) -> None:
        self.status = status
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() if headers else b""
        head = _status_line(status) + _JSON[charset] + extra + _Date.lines() + b"Content-Length: %d\r\n\r\n" % len(body)
        self.transport.write(head + body)

    async def start(self, status: int, first: bytes) -> SseSink | None:
        self.status = status
        t = self.transport
        t.write(_sse_head(status) + b"%x\r\n%b\r\n" % (len(first), first))
        self._sink = SseSink(t, True, ends=True)
        return self._sink

    async def write(self, data: bytes) -> None:
        t = self.transport
        if t.is_closing():
            return
        t.write(b"%x\r\n%b\r\n" % (len(data), data))
        if t.get_write_buffer_size() > SINK_HIGH:
            await SseSink(t, True).drained()

    async def end(self) -> None:
        sink = self._sink
        if sink is not None and sink.ended:
            return  # the pump wrote the body's end with the stream's last bytes
        if not self.transport.is_closing():
            self.transport.write(b"0\r\n\r\n")


class FastFront(asyncio.Protocol):
    """One connection to the public HTTP port: hot requests served here, the rest handed to aiohttp."""

    def __init__(self, front: Any, fallback: Callable[[], asyncio.Protocol], conns: set[FastFront]) -> None:
        self.front = front  # cluster.router.http_server.OpenAIServer
        self.fallback = fallback
        self.conns = conns
        self.max_body = front.config.max_body_bytes
        self.transport: Any = None
        self.buf = b""
        #: Bytes for aiohttp once the connection is handed over (None: not handing over).
        self.spill: bytes | None = None
        self.queue: collections.deque[Any] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as aiohttp's tcp_keepalive
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        if self.spill is not None:
            self.spill += data
            return
        buf = self.buf + data if self.buf else data
        while buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    return self._hand_over(buf)
                break
            head = parse_head(buf[: end + 4])
            if head is None or head[2] > self.max_body:
                return self._hand_over(buf)
            stop = end + 4 + head[2]
            if len(buf) < stop:
                break
            self.queue.append((head[0], head[1], buf[end + 4 : stop]))
            buf = buf[stop:]
            self._wake()
        self.buf = buf

    def _wake(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _hand_over(self, buf: bytes) -> None:
        self.spill, self.buf = buf, b""
        if self.task is None:  # nothing in flight: at once
            self._switch()
        else:
            self.queue.append(_HANDOVER)
            self._wake()

    def _switch(self) -> None:
        """Give the connection to a fresh aiohttp protocol and replay what it has not read yet."""
        self.conns.discard(self)
        proto, t = self.fallback(), self.transport
        spill, self.spill = self.spill, b""
        t.set_protocol(proto)
        proto.connection_made(t)
        if spill:
            proto.data_received(spill)

    async def _serve(self) -> None:
        queue, loop = self.queue, asyncio.get_running_loop()
        while True:
            while queue:
                item = queue.popleft()
                if item is _HANDOVER:
                    self.task = None
                    return self._switch()
                await self._one(*item)
                self.idle_since = time.monotonic()
            self.waiter = loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def _one(self, endpoint: str, headers: dict[str, str], body: bytes) -> None:
        reply = FastReply(self.transport)
        try:
            await self.front.relay(endpoint, headers, body, reply)
        except Exception:
            log.exception("unhandled error in HTTP handler")
            if reply.status:  # the headers are out: all that is left is to end the connection
                self.transport.close()
            else:
                reply.answer(500, error_body(500, "internal error", "internal_error"))

    def busy(self) -> bool:
        """A request is being answered, or waits in line (pipelined)."""
        return bool(self.queue) or (self.task is not None and self.waiter is None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        if self.task is not None:
            self.task.cancel()  # the relay's replica call is cancelled with it: the engine aborts

    def eof_received(self) -> bool | None:
        return None  # close (as aiohttp does); a request in flight is cancelled by connection_lost


async def sweep_idle(conns: set[FastFront], keepalive_s: float = KEEPALIVE_S, every_s: float = SWEEP_S) -> None:
    """Close keep-alive connections idle longer than ``keepalive_s`` (one task for all, no timer per request)."""
    while True:
        await asyncio.sleep(every_s)
        now = time.monotonic()
        for c in list(conns):
            if not c.busy() and now - c.idle_since > keepalive_s and c.transport is not None:
                c.transport.close()
