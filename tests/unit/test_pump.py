"""The per-token relay (cluster/router/pump.py and its C twin, cluster/router/_pump*.c): for the same replica bytes
both write the same bytes to the client, keep the same token ids and text for a migration, charge the same tokens
and count the same inter-token gaps."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from cluster.common.relay_wire import CHUNK, END, frame
from cluster.proto import replica_pb2
from cluster.router import pump as pumps
from cluster.router.relay import EOF, PAUSED, RelayCall, RelayPool
from tests.unit.pump_cases import BOUNDS, HIGH, IMPLS, Transport, chunk


class Run:
    """One pump over a fake client transport, with what it folded."""

    def __init__(self, impl: str, chunked: bool = True, fold_every: int = 64, last: float | None = None) -> None:
        self.transport = Transport()
        self.ids: list[int] = []
        self.text: list[str] = []
        self.folds: list[tuple[list[int], float, int]] = []
        pump_type = pumps.implementation(impl)[1]
        start = time.monotonic() if last is None else last
        self.pump = pump_type(self.transport, chunked, self.ids, self.text, BOUNDS, self._fold, fold_every, start, HIGH)

    def _fold(self, counts: list[int], total: float, n: int) -> None:
        self.folds.append((list(counts), total, n))

    def outcome(self) -> tuple:
        p = self.pump
        folded = [(sum(c), n) for c, _, n in self.folds]  # which bucket: the clock's (test_..._bucket)
        return self.transport.out, self.ids, self.text, p.tokens, p.used, p.resumable, p.sent, folded


def test_the_install_built_the_native_pump():
    frame_protocol, pump = pumps.implementation("native")
    assert pump.__module__ == "cluster.router._pump" and frame_protocol.__module__ == "cluster.router._pump"


def test_the_native_connection_takes_only_its_own_pump():
    pool = RelayPool("127.0.0.1", 1, pump="native")
    conn = pool.connection(pool)
    with pytest.raises(TypeError, match=r"_pump\.Pump"):
        conn.pump = Run("python").pump
    conn.pump = Run("native").pump
    conn.pump = None
    assert conn.pump is None


@pytest.mark.parametrize("impl", IMPLS)
def test_a_token_chunk_is_written_as_one_http_chunk_and_kept_for_a_migration(impl):
    run = Run(impl)
    assert run.pump.feed(chunk(data=b"data: {}\n\n", token_ids=[7, 8], text="hé", resumable=True)) is True
    assert run.transport.out == [b"a\r\ndata: {}\n\n\r\n"]
    assert (run.ids, run.text, run.pump.tokens, run.pump.sent, run.pump.resumable, run.pump.used) == ([7, 8], ["hé"], 2, True, True, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_unchunked_sinks_get_the_bytes_as_they_are(impl):
    run = Run(impl, chunked=False)
    run.pump.feed(chunk(data=b"data: x\n\n", token_ids=[1], resumable=True))
    assert run.transport.out == [b"data: x\n\n"]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_progress_note_is_timed_but_neither_kept_nor_written(impl):
    run = Run(impl, fold_every=1)
    assert run.pump.feed(chunk(token_ids=[3], text="t")) is True
    assert (run.transport.out, run.ids, run.text, run.pump.tokens, run.pump.sent) == ([], [], [], 0, False)
    assert [n for _, _, n in run.folds] == [1]


@pytest.mark.parametrize("impl", IMPLS)
def test_the_finish_chunk_sets_the_whole_requests_usage_once(impl):
    run = Run(impl)
    run.pump.feed(chunk(finish_reason="stop", prompt_tokens=5, completion_tokens=9, text="", resumable=True))
    run.pump.feed(chunk(finish_reason="stop", prompt_tokens=50, completion_tokens=90, resumable=True))
    assert run.pump.used == 14 and run.transport.out == [] and run.pump.sent


@pytest.mark.parametrize("impl", IMPLS)
def test_text_without_token_ids_is_charged_one_token_and_a_tool_call_is_not_resumable(impl):
    run = Run(impl)
    run.pump.feed(chunk(data=b"d", text="abc", resumable=True))
    run.pump.feed(chunk(data=b"d", token_ids=[1], resumable=False, tool_call=True))
    assert run.pump.tokens == 2 and run.pump.resumable is False and run.text == ["abc", ""]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_full_client_buffer_asks_for_a_pause_and_a_gone_client_gets_nothing(impl):
    run = Run(impl)
    run.transport.buffered = HIGH + 1
    assert run.pump.feed(chunk(data=b"x", token_ids=[1])) is False
    run.transport.closing = True
    assert run.pump.feed(chunk(data=b"y", token_ids=[2])) is True
    assert run.transport.out == [b"1\r\nx\r\n"] and run.ids == [1, 2]  # kept for the charge all the same


@pytest.mark.parametrize("impl", IMPLS)
def test_the_gap_since_the_last_chunk_lands_in_its_histogram_bucket(impl):
    run = Run(impl, fold_every=2, last=time.monotonic() - 0.004)
    run.pump.feed(chunk(data=b"a", token_ids=[1]))
    assert run.folds == []  # not yet: every 2
    run.pump.feed(chunk(data=b"b", token_ids=[2]))
    ((counts, total, n),) = run.folds
    assert n == 2 and counts[2] == 1 and sum(counts) == 2 and 0.004 <= total < 1.0  # 4 ms: (2.5, 5] ms
    run.pump.feed(chunk(data=b"c", token_ids=[3]))
    run.pump.flush()
    assert [f[2] for f in run.folds] == [2, 1]
    run.pump.flush()  # nothing counted since: nothing folded
    assert len(run.folds) == 2


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, wire: int, body: bytes) -> bytes:
    return _varint(number << 3 | wire) + body


@pytest.mark.parametrize("impl", IMPLS)
def test_unpacked_token_ids_and_fields_it_does_not_know_read_as_protobuf_reads_them(impl):
    wire = (
        _field(15, 0, _varint(300))  # unknown fields of every wire type
        + _field(16, 1, b"\x00" * 8)
        + _field(17, 5, b"\x00" * 4)
        + _field(18, 2, _varint(3) + b"abc")
        + _field(3, 0, _varint(70000))  # token ids, unpacked, then packed
        + _field(3, 0, _varint(5))
        + _field(3, 2, _varint(2) + _varint(1) + _varint(2))
        + _field(1, 2, _varint(2) + b"hi")
        + _field(4, 2, _varint(2) + b"ok")
        + _field(5, 0, _varint(1))
    )
    parsed = replica_pb2.OpenAIChunk.FromString(wire)
    run = Run(impl)
    run.pump.feed(wire)
    assert run.ids == list(parsed.token_ids) == [70000, 5, 1, 2]
    assert run.text == [parsed.text] and run.transport.out == [b"2\r\nhi\r\n"] and run.pump.resumable and run.pump.tokens == 4


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [b"\x0a\x05ab", b"\x1a\x02\xff", b"\x80", b"\x22\x02\xff\xfe", b"\x0b"])
def test_a_malformed_chunk_raises_instead_of_relaying_garbage(impl, bad):
    run = Run(impl)
    with pytest.raises(Exception):  # noqa: B017 - ValueError in C, protobuf's DecodeError in Python
        run.pump.feed(bad)
    assert run.transport.out == [] and run.ids == []


def test_both_pumps_do_the_same_with_random_streams():
    rng = random.Random(7)
    words = ["", "a", "héllo", "日本", "\n", "x" * 200]
    for _ in range(50):
        chunks = []
        for _ in range(rng.randint(1, 30)):
            fields = {"token_ids": [rng.randrange(1 << 32) for _ in range(rng.randint(0, 3))], "text": rng.choice(words)}
            if rng.random() < 0.8:
                fields["data"] = rng.choice(words).encode() or b"d"
            fields["resumable"] = rng.random() < 0.9
            if rng.random() < 0.1:
                fields.update(finish_reason="length", prompt_tokens=rng.randrange(1000), completion_tokens=rng.randrange(1000))
            chunks.append(chunk(**fields))
        every = rng.randint(1, 8)
        runs = [Run(impl, fold_every=every) for impl in IMPLS]
        for c in chunks:
            assert runs[0].pump.feed(c) == runs[1].pump.feed(c)
        for r in runs:
            r.pump.flush()
        assert runs[0].outcome() == runs[1].outcome()


def _pumped(impl: str, wire: bytes, cut: int, ends: bool = False, head: bytes | None = None) -> tuple:
    """``wire`` fed to a connection in pieces of ``cut`` bytes while a pump relays its call: (the pump's run,
    the connection, what the call's pump returned)."""

    async def main() -> tuple:
        pool = RelayPool("127.0.0.1", 1, pump=impl)
        conn = pool.connection(pool)
        call = conn.call = RelayCall(conn)
        run = Run(impl)
        run.pump = call.pump_type(run.transport, True, run.ids, run.text, BOUNDS, run._fold, 64, time.monotonic(), HIGH, head, None, ends)
        task = asyncio.ensure_future(call.pump(run.pump))
        await asyncio.sleep(0)  # the pump is set on the connection
        for i in range(0, len(wire), cut):
            conn.data_received(wire[i : i + cut])
        return run, conn, await asyncio.wait_for(task, 5)

    return asyncio.run(main())


TOKENS = [chunk(data=f"data: {i}\n\n".encode(), token_ids=[i], text=str(i), resumable=True) for i in range(20)]
HTTP = b"".join(b"%x\r\n%b\r\n" % (len(c.data), c.data) for c in map(replica_pb2.OpenAIChunk.FromString, TOKENS))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cut", [1, 3, 64, 10_000])
def test_a_pumped_call_writes_every_chunk_whatever_the_cut_then_ends(impl, cut):
    wire = b"".join(frame(CHUNK, c) for c in TOKENS) + frame(END)
    run, conn, outcome = _pumped(impl, wire, cut)
    assert outcome is EOF and b"".join(run.transport.out) == HTTP  # the body's end is the front end's to write
    assert run.ids == list(range(20)) and run.pump.tokens == 20 and conn.pump is None and conn.call is None
    assert run.pump.ended is False


@pytest.mark.parametrize("cut", [1, 7, 64, 10_000])
def test_what_one_read_brings_goes_to_the_client_in_one_write_in_both_pumps(cut):
    wire = b"".join(frame(CHUNK, c) for c in TOKENS) + frame(END)
    native, python = (_pumped(impl, wire, cut, ends=True)[0].transport.out for impl in IMPLS)
    assert native == python and b"".join(native) == HTTP + b"0\r\n\r\n"
    reads = -(-len(wire) // cut)
    assert len(native) <= reads and (cut < len(wire) or len(native) == 1)  # never more writes than reads


@pytest.mark.parametrize("impl", IMPLS)
def test_a_pump_that_ends_the_body_writes_its_last_chunk_with_the_streams_last_bytes(impl):
    wire = frame(CHUNK, TOKENS[0]) + frame(CHUNK, TOKENS[1]) + frame(END)
    run, _, outcome = _pumped(impl, wire, len(wire), ends=True, head=b"HEAD")
    assert outcome is EOF and run.transport.out == [b"HEAD" + HTTP[:28] + b"0\r\n\r\n"] and run.pump.ended is True
    # An END alone (the last chunk came in an earlier read) still ends the body, in a write of its own.
    run, _, _ = _pumped(impl, frame(CHUNK, TOKENS[0]) + frame(END), len(frame(CHUNK, TOKENS[0])), ends=True)
    assert run.transport.out == [HTTP[:14], b"0\r\n\r\n"] and run.pump.ended is True


@pytest.mark.parametrize("impl", IMPLS)
def test_a_stream_with_no_chunk_or_a_declined_one_is_not_ended_by_the_pump(impl):
    run, _, outcome = _pumped(impl, frame(END), 100, ends=True, head=b"HEAD")  # the front answers 502 instead
    assert outcome is EOF and run.transport.out == [] and run.pump.ended is False


@pytest.mark.parametrize("impl", IMPLS)
def test_a_pause_holds_the_rest_for_the_next_pump_and_the_next_call_never_reaches_the_old_pump(impl):
    chunks = [frame(CHUNK, chunk(data=b"%d" % i, token_ids=[i])) for i in range(4)]

    async def main() -> tuple:
        pool = RelayPool("127.0.0.1", 1, pump=impl)
        conn = pool.connection(pool)
        call = conn.call = RelayCall(conn)
        run = Run(impl)
        run.transport.buffered = HIGH + 1  # full from the first write on
        task = asyncio.ensure_future(call.pump(run.pump))
        await asyncio.sleep(0)
        conn.data_received(b"".join(chunks))
        assert await asyncio.wait_for(task, 5) is PAUSED
        assert len(run.transport.out) == 1  # what that read brought, in one write
        run.transport.buffered = 0
        conn.data_received(frame(END))
        assert await asyncio.wait_for(call.pump(run.pump), 5) is EOF
        # The connection carries the next call: its chunks go to that call, not to the old pump.
        assert pool._idle.pop() is conn
        nxt = conn.call = RelayCall(conn)
        conn.data_received(frame(CHUNK, chunk(data=b"next", token_ids=[99])) + frame(END))
        got = await nxt.read()
        return run, got, await nxt.read()

    run, got, end = asyncio.run(main())
    assert run.transport.out == [b"".join(b"1\r\n%d\r\n" % i for i in range(4))] and run.ids == [0, 1, 2, 3]
    assert got.data == b"next" and end is EOF
