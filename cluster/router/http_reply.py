"""How the HTTP fronts write an inference answer: :class:`Reply` (aiohttp's :class:`WebReply`, the fast path's
``FastReply`` in cluster/router/http_fast.py) and :class:`SseSink`, the client's socket the balancer writes an SSE
stream's tokens to itself (cluster/router/attempt.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from aiohttp import web

_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
#: A client's socket buffer above this pauses its stream's replica; it resumes below the low mark.
SINK_HIGH, SINK_LOW = 256 * 1024, 64 * 1024


class SseSink:
    """The client's socket, for a stream whose headers are out: bytes framed as aiohttp's own writer frames them.

    HTTP/1.1 responses without a length are chunked (``Transfer-Encoding: chunked``, set by aiohttp at
    ``prepare``), so each write is one chunk; ``write_eof`` then ends the body as usual.  The stream's pump
    (cluster/router/pump.py) writes to ``transport`` itself, skipping aiohttp's per-write bookkeeping (there
    is none this response needs: no compression, no length); :data:`SINK_HIGH` is where it asks to pause.
    """

    __slots__ = ("chunked", "ended", "ends", "head", "transport")

    def __init__(self, transport: Any, chunked: bool, head: bytes | None = None, ends: bool = False) -> None:
        self.transport = transport
        #: Each write is one HTTP/1.1 chunk.
        self.chunked = chunked
        #: The response's head, while it is still to be written with the stream's first bytes (a sink given
        #: before the stream started: :meth:`Reply.prepare`); None once it is out.
        self.head = head
        #: The body's last chunk is the pump's to write, with the stream's last bytes, when the replica ends the
        #: stream cleanly (the fast front's sinks; aiohttp writes its own at ``write_eof``).
        self.ends = ends
        #: The pump wrote it: the front end must not.
        self.ended = False

    @classmethod
    def of(cls, request: web.Request, resp: web.StreamResponse) -> SseSink | None:
        transport = request.transport
        if transport is None or resp.compression:
            return None
        return cls(transport, resp.headers.get("Transfer-Encoding", "").lower() == "chunked")

    async def drained(self) -> None:
        """Until the client has read its buffer down (polled: only a client slower than the engine gets here)."""
        t = self.transport
        while not t.is_closing() and t.get_write_buffer_size() > SINK_LOW:  # noqa: ASYNC110 - a socket buffer, no event
            await asyncio.sleep(0.005)


class Reply(Protocol):
    """Where :meth:`OpenAIServer.relay` writes its answer; ``status``: the answer's once given, or its head's
    once out (0 before: an error can still be answered with its own status)."""

    status: int

    def answer(self, status: int, body: bytes, charset: bool = True, headers: dict[str, str] | None = None) -> None:
        """A whole JSON answer (``charset``: ``; charset=utf-8`` in its Content-Type)."""

    async def start(self, status: int, first: bytes) -> SseSink | None:
        """An SSE stream's headers and first bytes; the sink the balancer may write the rest to."""

    def prepare(self) -> SseSink | None:
        """Before a stream request's first chunk: a sink whose ``head`` (200, SSE) the balancer's pump writes
        with the first bytes, if they are an ordinary SSE chunk; None: the first chunk goes to :meth:`start`."""

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...


class WebReply:
    """:class:`Reply` as an aiohttp response (``resp``, returned by the route's handler)."""

    __slots__ = ("request", "resp", "status")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp: web.StreamResponse | None = None
        self.status = 0

    def answer(self, status: int, body: bytes, charset: bool = True, headers: dict[str, str] | None = None) -> None:
        self.status = status
        cs = "utf-8" if charset else None
        self.resp = web.Response(body=body, status=status, content_type="application/json", charset=cs, headers=headers)

    async def start(self, status: int, first: bytes) -> SseSink | None:
        self.status = status
        resp = self.resp = web.StreamResponse(status=status, headers=_SSE_HEADERS)
        await resp.prepare(self.request)
        await resp.write(first)
        return SseSink.of(self.request, resp)

    def prepare(self) -> SseSink | None:
        return None  # aiohttp writes its own head (at start)

    async def write(self, data: bytes) -> None:
        assert self.resp is not None
        await self.resp.write(data)

    async def end(self) -> None:
        assert self.resp is not None
        await self.resp.write_eof()


def error_body(status: int, message: str, etype: str = "invalid_request_error", param: str | None = None) -> bytes:
    """OpenAI's error JSON, as ``web.json_response`` encodes it."""
    return json.dumps({"error": {"message": message, "type": etype, "param": param, "code": status}}).encode()
