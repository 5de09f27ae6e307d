"""The relay stream's wire format: replica.proto's OpenAI call as length-prefixed frames on a TCP connection.

Why: over ``grpc.aio`` a router spends about 40 us of CPU reading one streamed
message before it does anything with it (``loadtests/bench/grpc_floor.py``),
about twice a Rust gateway's whole cost per relayed token.  The relay stream
carries the same messages (``OpenAIRequest`` in, ``OpenAIChunk`` s out) with
none of HTTP/2's machinery, read by the event loop itself.

Spec: a connection starts with :data:`MAGIC` from the client.  Then each frame
is a 5-byte header, the payload's length (big-endian u32) and its kind (u8),
then the payload.  One call at a time per connection (HTTP/1.1 keep-alive
style): the client sends ``REQUEST`` (an ``OpenAIRequest``); the server answers
``CHUNK`` frames (``OpenAIChunk`` s), then ``END`` (done, the connection may
carry the next call) or ``ERROR`` (a status: the gRPC code as one byte, then
UTF-8 details; the connection may carry the next call too).  To cancel, the
client closes the connection; the server then cancels the call (the engine
aborts the request).  TLS, when ``internal_tls`` is set, is the same mutual
TLS as the replica's gRPC port.

A connection may instead carry the replica's load stream: the client sends
``LOAD`` (a ``LoadStreamRequest``) as its one frame; the server answers a
``CHUNK`` frame per ``LoadReport`` for as long as the connection stays open
(``ERROR`` with UNIMPLEMENTED from a server that has no load stream).  Why:
over ``grpc.aio`` each report costs the router about 0.3 ms of CPU (its
HTTP/2 machinery and a thread hop), and every router worker follows every
replica ten times a second, so 1,000 replicas would take a few cores of each
worker doing nothing but reading reports; here a report is one socket read
and one protobuf parse on the event loop.

Failure modes: a frame longer than :data:`MAX_FRAME` or of an unknown kind is
a protocol error; the reader closes the connection (the router then treats the
replica as failed, as it would a reset).
"""

from __future__ import annotations

import struct

MAGIC = b"LLR1"
HEADER = struct.Struct("!IB")
HEADER_SIZE = HEADER.size
#: As the replica's gRPC port allows (grpc.max_receive_message_length).
MAX_FRAME = 64 * 1024 * 1024

REQUEST = 1
CHUNK = 2
END = 3
ERROR = 4
LOAD = 5
KINDS = frozenset((REQUEST, CHUNK, END, ERROR, LOAD))

_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class ProtocolError(Exception):
    """The peer sent something that is not a relay frame."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    return _pack(len(payload), kind) + payload


def error_frame(code: int, details: str) -> bytes:
    return frame(ERROR, bytes((code & 0xFF,)) + details.encode("utf-8", "replace"))


def parse_error(payload: bytes) -> tuple[int, str]:
    """(gRPC status code value, details) of an ``ERROR`` frame."""
    if not payload:
        return 2, "the replica sent an empty error"  # UNKNOWN
    return payload[0], payload[1:].decode("utf-8", "replace")


class FrameReader:
    """Splits a byte stream into (kind, payload) frames; feed it what the socket delivers."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER_SIZE:
            size, kind = _unpack_from(buf, pos)
            if size > MAX_FRAME or kind not in KINDS:
                raise ProtocolError(f"bad frame header (length {size}, kind {kind})")
            stop = pos + HEADER_SIZE + size
            if stop > end:
                break
            out.append((kind, buf[pos + HEADER_SIZE : stop]))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return out
