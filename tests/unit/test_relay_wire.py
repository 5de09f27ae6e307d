"""The relay stream's framing (cluster/common/relay_wire.py): what the socket delivers, in any cut, comes out whole."""

from __future__ import annotations

import pytest

from cluster.common.relay_wire import CHUNK, END, ERROR, FrameReader, ProtocolError, error_frame, frame, parse_error


def test_frames_split_anywhere_in_the_byte_stream_come_out_whole():
    frames = [frame(CHUNK, b"x" * n) for n in (0, 1, 300)] + [frame(END)]
    wire = b"".join(frames)
    reader = FrameReader()
    out = [f for i in range(len(wire)) for f in reader.feed(wire[i : i + 1])]
    assert out == [(CHUNK, b""), (CHUNK, b"x"), (CHUNK, b"x" * 300), (END, b"")]


def test_a_header_that_is_no_relay_frame_is_refused():
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"GET / HTTP/1.1\r\n\r\n")


def test_an_error_frame_carries_its_status_code_and_details():
    ((kind, payload),) = FrameReader().feed(error_frame(14, "replica r0 is draining"))
    assert kind == ERROR and parse_error(payload) == (14, "replica r0 is draining")
