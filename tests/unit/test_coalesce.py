"""The replica sends together what one stream has ready while its previous message is written, never holding a token back."""

import asyncio
import contextlib

import pytest

from cluster.proto import replica_pb2
from cluster.replica.coalesce import coalesced

Chunk = replica_pb2.OpenAIChunk


def token(i: int, **kw) -> replica_pb2.OpenAIChunk:
    return Chunk(data=b'data: {"t": %d}\n\n' % i, token_ids=[i], text=f"t{i}", resumable=True, **kw)


async def burst(chunks: list[replica_pb2.OpenAIChunk], gate: asyncio.Event | None = None):
    for i, c in enumerate(chunks):
        yield c
        if i == 0 and gate is not None:
            await gate.wait()


async def test_chunks_ready_together_go_as_one_message_with_exact_ids_text_status_and_usage():
    parts = [token(0, status=200), token(1), token(2, tool_call=True), token(3, finish_reason="stop", prompt_tokens=5, completion_tokens=4)]
    gate = asyncio.Event()
    got = []
    async with contextlib.aclosing(coalesced(burst(parts, gate))) as s:
        async for c in s:
            got.append(c)
            gate.set()  # the rest become ready while this one is "on the wire"
            await asyncio.sleep(0.01)
    assert len(got) == 2
    first, rest = got
    assert first.data == parts[0].data and first.status == 200
    assert rest.data == b"".join(p.data for p in parts[1:])
    assert list(rest.token_ids) == [1, 2, 3] and rest.text == "t1t2t3"
    assert (rest.status, rest.finish_reason, rest.prompt_tokens, rest.completion_tokens) == (0, "stop", 5, 4)
    assert rest.tool_call and rest.resumable


async def test_the_first_token_goes_at_once_while_the_engine_is_still_working():
    gate = asyncio.Event()
    s = coalesced(burst([token(0, status=200), token(1)], gate))
    first = await asyncio.wait_for(s.__anext__(), 1.0)  # the engine has not produced token 1 yet
    assert list(first.token_ids) == [0]
    gate.set()
    assert list((await s.__anext__()).token_ids) == [1]
    with pytest.raises(StopAsyncIteration):
        await s.__anext__()


async def test_a_part_that_cannot_be_resumed_makes_the_merged_message_unresumable():
    parts = [token(0, status=200), token(1), Chunk(data=b"data: {}\n\n", token_ids=[2], text="x", resumable=False)]
    got = [c async for c in coalesced(burst(parts))]
    assert b"".join(c.data for c in got) == b"".join(p.data for p in parts)
    assert [i for c in got for i in c.token_ids] == [0, 1, 2]
    assert not got[-1].resumable


async def test_error_chunks_and_whole_json_bodies_travel_alone():
    err = Chunk(data=b'{"error": {"message": "boom"}}', status=500)
    body = Chunk(data=b'{"choices": []}', status=200)
    parts = [token(0, status=200), token(1), err, body, token(2)]
    got = [c async for c in coalesced(burst(parts))]
    assert [c.data for c in got] == [parts[0].data + parts[1].data, err.data, body.data, parts[4].data]
    assert got[1].status == 500


async def test_an_engine_error_is_raised_after_the_chunks_before_it():
    async def failing():
        yield token(0, status=200)
        raise RuntimeError("engine died")

    got = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for c in coalesced(failing()):
            got.append(c)
    assert [list(c.token_ids) for c in got] == [[0]]


async def test_cancelling_the_rpc_closes_the_engine_stream():
    closed = asyncio.Event()

    async def endless():
        try:
            i = 0
            while True:
                yield token(i)
                i += 1
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    async def consume():
        async for _ in coalesced(endless()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()  # before the RPC ended: the engine aborts the request
