"""A stream pumped from its first chunk (the fast HTTP front's streams over the relay stream): what the old
path did after the first chunk, and before it, still happens — first-token timeout, stall limit, retries on a
failed or 5xx first answer, JSON errors with their status, TTFT counted once — over both pumps."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import openai
import pytest

from cluster.proto import replica_pb2
from cluster.replica.errors import CallAborted
from cluster.replica.server import ReplicaServicer
from tests.conftest import wait_for

pytestmark = pytest.mark.asyncio
PUMPS = pytest.mark.parametrize("pump", ["native", "python"])
MSG = [{"role": "user", "content": "hello"}]


class SilentAfterThree(ReplicaServicer):
    """Streams three chunks of its first request, then goes silent (a replica wedged mid-stream)."""

    calls = 0

    async def chunks(self, request):  # type: ignore[override]
        type(self).calls += 1
        n = 0
        async for chunk in super().chunks(request):
            if type(self).calls == 1 and n == 3:
                await asyncio.Event().wait()
            n += 1
            yield chunk


class FirstCallFails(ReplicaServicer):
    """Serves every request but its first, which ``first_call`` answers instead (a fault, injected once)."""

    calls = 0

    async def chunks(self, request):  # type: ignore[override]
        type(self).calls += 1
        source = self.first_call() if type(self).calls == 1 else super().chunks(request)
        async for chunk in source:
            yield chunk

    async def first_call(self):
        raise NotImplementedError
        yield  # pragma: no cover


class Unanswering(FirstCallFails):
    """Accepts its first request and never answers it (a wedged engine)."""

    async def first_call(self):
        await asyncio.Event().wait()
        yield  # pragma: no cover


class FirstAnswer5xx(FirstCallFails):
    """Answers its first request with an engine's 503 (a JSON error as the first chunk)."""

    async def first_call(self):
        yield replica_pb2.OpenAIChunk(data=b'{"error": {"message": "engine overloaded"}}', status=503)


class FailsBeforeFirstToken(FirstCallFails):
    """Refuses its first request before any token (UNAVAILABLE)."""

    async def first_call(self):
        raise CallAborted(grpc.StatusCode.UNAVAILABLE, "injected failure")
        yield  # pragma: no cover


async def _start(sim_fleet, servicer: type[ReplicaServicer], pump: str, **router):
    servicer.calls = 0
    config = {"relay_pump": pump, "first_token_timeout_s": 0.5, "stall_timeout_s": 0.5, **router}
    r = await sim_fleet.start(2, servicers={0: servicer}, router=config, time_scale=0.05)
    await wait_for(lambda: all(h.relay is not None for h in r.replicas.by_id.values()), 5)  # pumped: over the relay stream
    return r


async def _stream(router, max_tokens: int = 12) -> tuple[int, list[str], str | None]:
    """(status, the streamed texts, the finish reason) of one chat stream over the fast HTTP front."""
    body = {"model": "sim", "messages": MSG, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    texts, finish = [], None
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/chat/completions", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data: {"):
                    for c in json.loads(line[6:])["choices"]:
                        texts.append(c["delta"].get("content") or "")
                        finish = c.get("finish_reason") or finish
            return r.status, texts, finish


@PUMPS
async def test_a_replica_silent_after_its_first_chunks_is_left_at_the_stall_limit_and_the_stream_resumed(sim_fleet, pump):
    router = await _start(sim_fleet, SilentAfterThree, pump)
    status, texts, finish = await asyncio.wait_for(_stream(router), 10)
    assert status == 200 and finish == "length" and len([t for t in texts if t]) == 12
    assert router.balancer.migrations == 1
    _, again, _ = await _stream(router)  # the same greedy answer without a migration
    assert "".join(again) == "".join(texts)


@PUMPS
async def test_a_replica_that_never_sends_a_first_chunk_is_left_at_the_first_token_timeout(sim_fleet, pump):
    router = await _start(sim_fleet, Unanswering, pump)
    status, texts, finish = await asyncio.wait_for(_stream(router), 10)
    assert status == 200 and finish == "length" and len([t for t in texts if t]) == 12
    assert router.metrics.value("retries_total", {"model": "sim", "reason": "first_token_timeout"}) == 1


@PUMPS
@pytest.mark.parametrize("servicer", [FirstAnswer5xx, FailsBeforeFirstToken], ids=["5xx", "unavailable"])
async def test_a_stream_whose_first_answer_failed_is_retried_and_the_client_sees_one_whole_answer(sim_fleet, pump, servicer):
    router = await _start(sim_fleet, servicer, pump)
    status, texts, finish = await _stream(router)
    assert status == 200 and finish == "length" and len([t for t in texts if t]) == 12
    assert servicer.calls == 1 and sum(h.routed for h in router.replicas.by_id.values()) == 2


@PUMPS
async def test_a_stream_the_engine_refuses_is_its_json_error_with_its_status(sim_fleet, pump):
    router = await _start(sim_fleet, ReplicaServicer, pump)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3, logit_bias={"5": 10}, stream=True)
    ok = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3, stream=True)
    assert [c async for c in ok][-1].choices[0].finish_reason == "length"  # the connection serves on


@PUMPS
async def test_each_pumped_stream_counts_its_first_token_time_once(sim_fleet, pump):
    router = await _start(sim_fleet, ReplicaServicer, pump)
    for _ in range(5):
        assert (await _stream(router, 4))[0] == 200
    assert router.metrics.value("time_to_first_token_seconds_count", {"model": "sim"}) == 5
    assert router.metrics.value("inter_token_latency_seconds_count", {"model": "sim"}) >= 5 * 3
