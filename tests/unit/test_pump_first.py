"""A pump attached before a stream's first chunk (``on_first``): it takes an ordinary SSE stream whole, writing
the response's head with the first bytes, so the request's task sleeps from the request to the stream's end;
a first chunk that is not an ordinary SSE one (an error status, a JSON answer, no bytes) is left to Python,
untouched, and so is every chunk after it. Both implementations alike."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.common.relay_wire import CHUNK, END, frame
from cluster.proto import replica_pb2
from cluster.router import pump as pumps
from cluster.router.relay import DECLINED, EOF, RelayCall, RelayPool
from tests.unit.pump_cases import BOUNDS, HIGH, IMPLS, Transport, chunk

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


class First:
    """A pump waiting for its first chunk, over a fake client transport."""

    def __init__(self, impl: str, head: bytes | None = HEAD, on_first=None) -> None:
        self.transport = Transport()
        self.ids: list[int] = []
        self.text: list[str] = []
        self.firsts = 0
        self.folds: list[int] = []
        pump_type = pumps.implementation(impl)[1]
        fold = lambda counts, total, n: self.folds.append(n)  # noqa: E731
        self.pump = pump_type(self.transport, True, self.ids, self.text, BOUNDS, fold, 1, 0.0, HIGH, head, on_first or self._first)

    def _first(self) -> None:
        self.firsts += 1


def _sse(i: int, **more) -> bytes:
    return chunk(data=b"data: %d\n\n" % i, token_ids=[i], text=str(i), resumable=True, **more)


def _http(i: int) -> bytes:
    """Chunk ``i``'s bytes as one HTTP/1.1 chunk."""
    data = b"data: %d\n\n" % i
    return b"%x\r\n%b\r\n" % (len(data), data)


@pytest.mark.parametrize("impl", IMPLS)
def test_the_head_goes_out_with_the_first_bytes_in_one_write_and_on_first_is_called_once(impl):
    run = First(impl)
    assert run.pump.feed(_sse(1, status=200)) is True
    assert run.pump.feed(_sse(2)) is True
    assert run.transport.out == [HEAD + _http(1), _http(2)]
    assert run.firsts == 1 and run.pump.head_sent and run.ids == [1, 2] and run.pump.tokens == 2
    assert run.folds == [1]  # the gap before the second chunk only: on_first times the first token


@pytest.mark.parametrize("impl", IMPLS)
def test_without_a_head_to_write_the_first_chunk_is_written_as_any_other(impl):
    run = First(impl, head=None)  # a migrated stream: its head went out on the replica before
    assert run.pump.feed(_sse(1)) is True
    assert run.transport.out == [_http(1)] and run.firsts == 1 and not run.pump.head_sent


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "first",
    [
        chunk(data=b'{"error": {"message": "boom"}}', status=500),  # the replica failed: retried elsewhere
        chunk(data=b'{"error": {"message": "too long"}}', status=400),  # the request's fault: answered as JSON
        chunk(data=b'{"id": "x", "choices": []}', status=200),  # a JSON answer, not SSE
        chunk(finish_reason="stop", prompt_tokens=1, completion_tokens=0),  # no bytes
    ],
    ids=["5xx", "4xx", "json", "no-bytes"],
)
def test_a_first_chunk_that_is_not_an_ordinary_sse_one_is_declined_untouched_and_so_is_the_rest(impl, first):
    run = First(impl)
    assert run.pump.feed(first) is None
    assert run.pump.feed(_sse(2)) is None  # never out of order behind the declined one
    assert (run.transport.out, run.ids, run.text, run.firsts, run.pump.tokens) == ([], [], [], 0, 0)
    assert not run.pump.sent and not run.pump.head_sent and run.pump.used is None


@pytest.mark.parametrize("impl", IMPLS)
def test_what_on_first_raises_stops_the_pump_before_anything_is_written(impl):
    def boom() -> None:
        raise RuntimeError("breaker")

    run = First(impl, on_first=boom)
    with pytest.raises(RuntimeError, match="breaker"):
        run.pump.feed(_sse(1))
    assert run.transport.out == []


async def _attached(impl: str) -> tuple:
    """A call on a relay connection, its pump attached before the first chunk (as an attempt attaches it)."""
    pool = RelayPool("127.0.0.1", 1, pump=impl)
    conn = pool.connection(pool)
    call = conn.call = RelayCall(conn)
    run = First(impl)
    run.pump = call.pump_type(run.transport, True, run.ids, run.text, BOUNDS, lambda *a: None, 64, 0.0, HIGH, HEAD, run._first)
    task = asyncio.ensure_future(call.pump(run.pump))
    await asyncio.sleep(0)  # the pump is set on the connection
    return run, conn, call, task


@pytest.mark.parametrize("impl", IMPLS)
def test_a_declined_first_chunk_is_read_by_python_and_the_calls_rest_after_it_in_order(impl):
    async def main() -> tuple:
        run, conn, call, task = await _attached(impl)
        conn.data_received(frame(CHUNK, chunk(data=b"{}", status=503)) + frame(CHUNK, _sse(7)) + frame(END))
        outcome = await asyncio.wait_for(task, 5)
        return run, conn, outcome, [await call.read() for _ in range(3)]

    run, conn, outcome, read = asyncio.run(main())
    assert outcome is DECLINED and conn.pump is None and run.transport.out == []
    assert [r.status for r in read[:2]] == [503, 0] and read[1].data == b"data: 7\n\n" and read[2] is EOF


@pytest.mark.parametrize("impl", IMPLS)
def test_an_ordinary_stream_is_pumped_whole_from_its_first_chunk_then_ends(impl):
    async def main() -> tuple:
        run, conn, _, task = await _attached(impl)
        conn.data_received(b"".join(frame(CHUNK, _sse(i, status=200 if i == 0 else 0)) for i in range(5)) + frame(END))
        return run, await asyncio.wait_for(task, 5)

    run, outcome = asyncio.run(main())
    assert outcome is EOF and run.firsts == 1 and run.ids == list(range(5)) and run.pump.head_sent
    assert b"".join(run.transport.out) == HEAD + b"".join(_http(i) for i in range(5))
    assert time.monotonic() >= run.pump.last > 0
    assert replica_pb2.OpenAIChunk.FromString(_sse(0, status=200)).status == 200
