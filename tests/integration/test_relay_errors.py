"""The relay's error paths over real gRPC on loopback: whose fault an error is, and what a client sees.

- A request the engine refuses is the client's answer: one attempt, no retry, no circuit-breaker strike.
- A stream that cannot be resumed exactly (a tool call being emitted) and loses its replica ends with a clear
  error, never as a truncated answer presented as complete; a plain stream is resumed instead.
- A non-streamed answer that takes longer than the first-token timeout is not retried: the replica's
  progress chunks keep it alive.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import openai
import pytest

from cluster.client import build_request
from cluster.proto import inference_pb2_grpc, replica_pb2
from cluster.replica.errors import CallAborted
from cluster.replica.server import ReplicaServicer
from tests.conftest import wait_for

pytestmark = pytest.mark.asyncio

MSG = [{"role": "user", "content": "hello"}]


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)


def _routed(router) -> int:
    return sum(h.routed for h in router.replicas.by_id.values())


async def test_a_request_the_engine_refuses_is_answered_once_and_never_strikes_the_breaker(sim_fleet):
    router = await sim_fleet.start(2, router={"circuit_breaker": {"failures": 2, "eject_s": 30}})
    client = oai(router)
    for i in range(6):
        with pytest.raises(openai.BadRequestError, match="logit_bias"):
            await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3, logit_bias={"5": 10}, user=f"u{i}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        req = build_request("hello", model="sim", chat=True, max_tokens=3)
        req.sampling.presence_penalty = 0.5
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [c async for c in inference_pb2_grpc.InferenceStub(ch).Generate(req)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "presence_penalty" in (err.value.details() or "")
    assert _routed(router) == 7  # one attempt each
    assert sum(router.metrics.value("retries_total", {"model": "sim", "reason": r}) for r in ("http_400", "unknown", "unavailable")) == 0
    assert not any(router.balancer.breaker.is_open(h) for h in router.replicas.by_id.values())
    ok = await client.chat.completions.create(model="sim", messages=MSG, max_tokens=3)  # both replicas still serve
    assert ok.usage.completion_tokens == 3


class ToolCallThenDie(ReplicaServicer):
    """Streams the start of a tool call (marked not resumable, as vLLM's replica marks it), then fails."""

    async def chunks(self, request):  # type: ignore[override]
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}
        event = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        yield replica_pb2.OpenAIChunk(data=data, status=200, token_ids=[1, 2], text="", resumable=False, tool_call=True)
        raise CallAborted(grpc.StatusCode.UNAVAILABLE, "replica process died")


async def test_a_stream_that_dies_mid_tool_call_ends_with_an_error_event_not_a_truncated_call(sim_fleet):
    router = await sim_fleet.start(2, servicers={0: ToolCallThenDie, 1: ToolCallThenDie})
    body = {"model": "sim", "messages": MSG, "stream": True, "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    events = []
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            async for raw in r.content:
                if raw.startswith(b"data: {"):
                    events.append(json.loads(raw[6:]))
    assert events[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"ci'
    assert "error" in events[-1] and "cannot be resumed" in events[-1]["error"]["message"]
    assert not any(ch.get("finish_reason") for e in events for ch in e.get("choices", []))  # never presented as complete
    assert router.balancer.migrations == 0 and _routed(router) == 1
    with pytest.raises(openai.APIError, match="cannot be resumed"):
        stream = await oai(router).chat.completions.create(model="sim", messages=MSG, stream=True)
        [c async for c in stream]


@pytest.mark.parametrize("pump", ["native", "python"])
async def test_a_pumped_stream_longer_than_the_stall_limit_is_relayed_whole(sim_fleet, pump):
    # ~2.5 s of steady tokens against a 1 s stall limit: the pump's own clock of the latest chunk keeps it alive.
    router = await sim_fleet.start(1, router={"first_token_timeout_s": 0.5, "stall_timeout_s": 1.0, "relay_pump": pump}, time_scale=1.0)
    handle = router.replicas.by_id["r0"]
    await wait_for(lambda: handle.relay is not None, 5)  # pumped: over the relay stream, not the OpenAI RPC
    started = asyncio.get_running_loop().time()
    stream = await oai(router).chat.completions.create(model="sim", messages=MSG, max_tokens=70, stream=True)
    chunks = [c async for c in stream]
    assert asyncio.get_running_loop().time() - started > 1.5
    assert chunks[-1].choices[0].finish_reason == "length" and sum(bool(c.choices[0].delta.content) for c in chunks) >= 60
    assert _routed(router) == 1 and router.balancer.migrations == 0


async def test_a_non_streamed_answer_longer_than_the_first_token_timeout_is_not_retried(sim_fleet):
    # ~2.5 s of generation at this time scale; the first-token timeout is 0.5 s and the stall timeout 1.5 s:
    # only the replica's progress chunks (first token, then one a second) keep the attempt alive.
    router = await sim_fleet.start(1, router={"first_token_timeout_s": 0.5, "stall_timeout_s": 1.5}, time_scale=1.0)
    started = asyncio.get_running_loop().time()
    resp = await oai(router).chat.completions.create(model="sim", messages=MSG, max_tokens=70)
    assert asyncio.get_running_loop().time() - started > 1.5
    assert resp.usage.completion_tokens == 70 and resp.choices[0].finish_reason == "length"
    assert _routed(router) == 1 and router.metrics.value("retries_total", {"model": "sim", "reason": "first_token_timeout"}) == 0
