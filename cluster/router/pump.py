"""The per-token relay: a relay connection's frame split and one stream's chunks to the client's socket.

Two implementations of the same two types, chosen by ``router.relay_pump``:
``native`` (the default: ``cluster/router/_pump*.c``, a C extension built at
install) and ``python`` (this module), which is also what runs when the
extension was not built (no C compiler), with a warning at startup.
``tests/unit/test_pump.py`` feeds both the same bytes and checks they do the
same.

:class:`FrameProtocol` is the base of a relay connection
(cluster/router/relay.py): ``data_received`` splits the replica's frames; a
``CHUNK`` while ``self.pump`` is set goes to the pump there, anything else to
the connection's ``_frame(kind, payload)`` (False: the connection broke, read
no further), a bad header to ``_broken(why)``; when the pump asks for a pause
or raises, ``_pump_stopped(exc or None)``.

:class:`Pump` is one stream's chunks to the client (cluster/router/attempt.py
``_pump``): per ``OpenAIChunk`` it times the gap since the last one (counted
into the inter-token histogram's buckets, folded every ``fold_every``); for a
chunk with bytes or a finish reason it keeps what a migration needs (its token
ids and text, appended to the request's lists; resumable), what the tenant's
charge needs (``tokens``: its token ids, or 1 for text without ids; ``used``:
the whole request's usage, from the finish chunk), and writes its bytes to the
client's transport (one HTTP/1.1 chunk when ``chunked``).  The frame split
writes what one read brought in one write, before any other frame is handled
and at the read's end (never later); ``feed`` writes its chunk at once.  Either
way False (``feed``) or a stop (the split) says the client's buffer is above
``high``: the caller pauses.  Given ``ends``, a clean ``END`` of a stream the
pump relayed (head written or written before it) puts the chunked body's end
(``0\r\n\r\n``) in that write (``ended``): the front end writes nothing after it.

Given ``on_first``, a pump is attached before the stream's first chunk and
takes that one too (``on_first()`` is called, no gap is timed before it), so
an ordinary stream never wakes the request's task until it ends; ``head`` (the
HTTP response's head, if not out yet) is written with the first bytes
(``head_sent``).  A first chunk with an error status, without bytes, or not
SSE while the head is still to write (a JSON answer) is *declined*: ``feed``
returns None, having done nothing, and so does every chunk after it; the
connection then hands it to Python, as when no pump is attached.

Why two: the C one is what makes a relayed token cost less router CPU than a
Rust gateway's (docs/routing.md, router overhead): uvloop calls its
``data_received`` straight into C, no Python frame, no protobuf object; this
one is the readable statement of what it does, and the fallback.

Failure modes: a malformed chunk raises (``ValueError`` in C, protobuf's
``DecodeError`` here): the pump stops with it, the attempt fails and the
client gets an error event, as with any relay protocol error.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from cluster.common.relay_wire import CHUNK, END, HEADER, HEADER_SIZE, KINDS, MAX_FRAME
from cluster.proto import replica_pb2

log = logging.getLogger(__name__)

_parse_chunk = replica_pb2.OpenAIChunk.FromString
_unpack_from = HEADER.unpack_from
monotonic = time.monotonic
#: fold(counts per bucket, sum of the gaps, how many): the gaps counted so far, into the histogram.
Fold = Callable[[list[int], float, int], None]


class Pump:
    """One stream's chunks to the client's socket (see the module's doc); the C ``_pump.Pump``'s twin."""

    __slots__ = (
        "_bounds",
        "_chunked",
        "_counts",
        "_first",
        "_fold",
        "_fold_every",
        "_head",
        "_high",
        "_ids",
        "_n",
        "_on_first",
        "_out",
        "_refused",
        "_text",
        "_total",
        "_transport",
        "ended",
        "ends",
        "head_sent",
        "last",
        "resumable",
        "sent",
        "tokens",
        "used",
    )

    def __init__(self, transport: Any, chunked: bool, sent_ids: list[int], sent_text: list[str], bounds: Sequence[float],
                 fold: Fold, fold_every: int, last: float, high: int, head: bytes | None = None,
                 on_first: Callable[[], object] | None = None, ends: bool = False) -> None:  # fmt: skip
        self._transport, self._chunked, self._high = transport, chunked, high
        self._ids, self._text = sent_ids, sent_text
        self._bounds = list(bounds)
        self._counts = [0] * len(self._bounds)
        self._fold, self._fold_every = fold, max(fold_every, 1)
        self._total, self._n = 0.0, 0
        self.last = last
        self.tokens = 0
        self.used: int | None = None
        self.resumable = True
        self.sent = False
        self._head, self.head_sent = head, False
        self._on_first, self._first, self._refused = on_first, on_first is not None, False
        #: What this read's chunks brought, written at once when the read is split (or by ``feed``).
        self._out: list[bytes] = []
        self.ends, self.ended = ends, False

    def _declines(self, chunk: replica_pb2.OpenAIChunk) -> bool:
        if self._refused or chunk.status not in (0, 200) or not chunk.data:
            return True
        return self._head is not None and not chunk.data.startswith(b"data:")

    def feed(self, payload: bytes) -> bool | None:
        """One ``CHUNK`` frame's payload; False: the client's buffer is full, pause; None: declined."""
        took = self._take(payload)
        return took if took is None else self._send()

    def _take(self, payload: bytes) -> bool | None:
        """One chunk, its bytes held for :meth:`_send`; None: declined."""
        chunk = _parse_chunk(payload)
        if self._first and self._declines(chunk):
            self._refused = True
            return None
        now = monotonic()
        if self._first:
            self._first = False
            self.last = now
            self._on_first()  # type: ignore[misc]
        else:
            gap = now - self.last
            self._counts[min(bisect_left(self._bounds, gap), len(self._counts) - 1)] += 1
            self._total += gap
            self._n += 1
            self.last = now
            if self._n >= self._fold_every:
                self.flush()
        data = chunk.data
        if not data and not chunk.finish_reason:
            return True  # a progress note of a non-streamed request
        ids, text = chunk.token_ids, chunk.text
        self._ids.extend(ids)
        self._text.append(text)
        if not chunk.resumable:
            self.resumable = False
        self.sent = True
        self.tokens += len(ids) or (1 if text else 0)
        if chunk.finish_reason and self.used is None:
            self.used = chunk.prompt_tokens + chunk.completion_tokens
        if data:
            self._out.append(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return True

    def _end(self) -> None:
        """The replica ended the stream cleanly: given ``ends``, the body's last chunk goes with what is held,
        unless the response is not this pump's stream (its first chunk declined, or none came: its head unsent)."""
        if self.ends and self._chunked and not self._refused and not self.ended and (self._head is None or self._out):
            self._out.append(b"0\r\n\r\n")
            self.ended = True

    def _send(self) -> bool:
        """What is held, to the client's socket in one write (the response's head first, the first time);
        False: its buffer is full, pause."""
        if not self._out:
            return True
        out, self._out = b"".join(self._out), []
        t = self._transport
        if t.is_closing():  # the client left: its request is cancelled, nothing to write to
            return True
        if self._head is not None:
            out, self._head, self.head_sent = self._head + out, None, True
        t.write(out)
        return t.get_write_buffer_size() <= self._high

    def flush(self) -> None:
        """Fold the gaps counted so far into the histogram."""
        if self._n:
            self._fold(list(self._counts), self._total, self._n)
            self._counts = [0] * len(self._counts)
            self._total, self._n = 0.0, 0


class FrameProtocol:
    """The base of a relay connection: splits frames (see the module's doc); the C ``_pump.FrameProtocol``'s twin."""

    pump: Any = None
    _rest = b""

    def _frame(self, kind: int, payload: bytes) -> bool:
        raise NotImplementedError

    def _broken(self, why: str) -> None:
        raise NotImplementedError

    def _pump_stopped(self, error: BaseException | None) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data, self._rest = self._rest + data, b""
        pos, end = 0, len(data)
        held = None  # the pump holding what it took from this read: written before anything else happens
        while end - pos >= HEADER_SIZE:
            size, kind = _unpack_from(data, pos)
            if size > MAX_FRAME or kind not in KINDS:
                self._send(held)
                return self._broken(f"bad frame header (length {size}, kind {kind})")
            stop = pos + HEADER_SIZE + size
            if stop > end:
                break
            payload = data[pos + HEADER_SIZE : stop]
            pos = stop
            pump = self.pump
            if kind == CHUNK and pump is not None:
                try:
                    took = pump._take(payload)
                except Exception as exc:  # a malformed chunk: ends the pump, not the connection
                    self._send(held)
                    held = None
                    self._pump_stopped(exc)
                    continue
                if took is not None:
                    held = pump
                    continue
            if kind == END and pump is not None:
                pump._end()
                held = pump
            self._send(held)
            held = None
            if not self._frame(kind, payload):  # declined by the pump, or not a chunk, or no pump
                return None
        if pos < end:
            self._rest = data[pos:]
        self._send(held)

    def _send(self, pump: Pump | None) -> None:
        """``pump``'s held bytes to the client; its pause (the buffer is full) or error ends the pump."""
        if pump is None:
            return
        try:
            if not pump._send():
                self._pump_stopped(None)
        except Exception as exc:  # the client's socket: ends the pump, not the connection
            self._pump_stopped(exc)


def implementation(name: str) -> tuple[type, type]:
    """(FrameProtocol, Pump) for ``router.relay_pump``; "native" falls back to these, with a warning, when
    the C extension was not built."""
    if name == "native":
        try:
            from cluster.router import _pump  # type: ignore[attr-defined]
        except ImportError as exc:
            log.warning("the native relay pump is not built; relaying in Python (more CPU per token)", extra={"error": str(exc)})
        else:
            return _pump.FrameProtocol, _pump.Pump
    return FrameProtocol, Pump
