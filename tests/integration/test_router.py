"""The router over sim replicas on loopback gRPC: both APIs, errors, cancel, retry.

No Ray here: the router is fed a static endpoint set, which is exactly what the
controller's watch hands it, so these tests cover the request path alone.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cluster.client import build_request
from cluster.proto import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.asyncio


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)


async def test_the_openai_client_gets_chat_and_completion_answers_with_usage(sim_fleet):
    router = await sim_fleet.start(2)
    client = oai(router)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["sim"]
    chat = await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hello"}], max_tokens=7)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 7 and chat.usage.prompt_tokens > 0
    comp = await client.completions.create(model="sim", prompt="once upon a time", max_tokens=5)
    assert comp.choices[0].text and comp.usage.total_tokens == comp.usage.prompt_tokens + 5


async def test_streaming_over_sse_yields_one_chunk_per_token_then_usage(sim_fleet):
    router = await sim_fleet.start(1)
    stream = await oai(router).chat.completions.create(
        model="sim", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    content = [c for c in chunks if c.choices]
    assert len(content) == 6
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 6


async def test_openai_errors_have_openai_shape_and_status(sim_fleet):
    router = await sim_fleet.start(1)
    client = oai(router)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        await client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "x"}], temperature=3)
    with pytest.raises(openai.BadRequestError, match="prompt"):
        await client.completions.create(model="sim", prompt="x " * 5000)  # longer than the 2048-token context
    url = f"http://127.0.0.1:{router.http_port}/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            body = await r.json()
            assert body["error"]["message"].startswith("body:") and body["error"]["type"] == "invalid_request_error"
        async with s.post(url, data=b"x" * (5 * 1024 * 1024)) as r:
            assert r.status == 413
        async with s.post(url, json={"model": "sim", "messages": [{"role": "user", "content": "x"}], "n": 3}) as r:
            assert r.status == 400 and "n:" in (await r.json())["error"]["message"]
        async with s.get(f"http://127.0.0.1:{router.http_port}/healthz") as r:
            assert r.status == 200 and (await r.json())["ready_replicas"] == 1


async def test_grpc_generate_streams_and_reports_usage_on_the_last_chunk(sim_fleet):
    router = await sim_fleet.start(2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        chunks = [c async for c in stub.Generate(build_request("hello", model="sim", chat=True, max_tokens=4))]
        assert len(chunks) == 4
        assert all(c.token_ids for c in chunks)
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4
        assert not chunks[0].finish_reason
        models = await stub.ListModels(inference_pb2.ListModelsRequest())
        assert [(m.name, m.ready_replicas, m.max_model_len) for m in models.models] == [("sim", 2, 2048)]


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r: setattr(r, "model", "nope"), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (lambda r: setattr(r.sampling, "temperature", 9.0), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (lambda r: setattr(r.sampling, "top_p", 0.0), grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        (lambda r: setattr(r.sampling, "max_tokens", 0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (lambda r: r.ClearField("chat"), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (lambda r: setattr(r, "prompt", "word " * 4000), grpc.StatusCode.INVALID_ARGUMENT, "max_model_len"),
    ],
)
async def test_grpc_bad_requests_get_a_status_and_a_message_naming_the_problem(sim_fleet, mutate, code, words):
    router = await sim_fleet.start(1)
    req = build_request("hello", model="sim", chat=True, max_tokens=4)
    mutate(req)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(req):
                pass
    assert err.value.code() == code
    assert words in err.value.details()


async def test_no_ready_replica_is_unavailable_not_a_hang(sim_fleet):
    router = await sim_fleet.start(0)
    router.replicas.apply(2, {"sim": []})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(build_request("x", model="sim", chat=False), timeout=10):
                pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_and_reflection_services_are_enabled(sim_fleet):
    router = await sim_fleet.start(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="llm_cluster.v1.Inference"))
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = [r async for r in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert "llm_cluster.v1.Inference" in names and "grpc.health.v1.Health" in names


async def _running(fleet) -> int:
    return sum(e.load().running + e.load().waiting for e in fleet.engines)


async def test_a_client_cancel_aborts_the_request_on_the_replica(sim_fleet):
    router = await sim_fleet.start(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        call = stub.Generate(build_request("hello", model="sim", chat=False, max_tokens=5000))
        await call.read()  # first token: it is running on the replica
        assert await _running(sim_fleet) == 1
        call.cancel()
    for _ in range(50):
        if await _running(sim_fleet) == 0:
            break
        await asyncio.sleep(0.02)
    assert await _running(sim_fleet) == 0
    assert sim_fleet.servicers[0].in_flight == {}


async def test_an_expired_deadline_aborts_the_request_on_the_replica(sim_fleet):
    router = await sim_fleet.start(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(build_request("hello", model="sim", chat=False, max_tokens=5000), timeout=0.5):
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if await _running(sim_fleet) == 0:
            break
        await asyncio.sleep(0.02)
    assert await _running(sim_fleet) == 0


async def test_an_http_client_disconnect_aborts_the_request_on_the_replica(sim_fleet):
    router = await sim_fleet.start(1)
    url = f"http://127.0.0.1:{router.http_port}/v1/completions"
    async with aiohttp.ClientSession() as s:
        resp = await s.post(url, json={"model": "sim", "prompt": "hi", "max_tokens": 5000, "stream": True})
        line = await resp.content.readline()
        assert line.startswith(b"data: ")
        assert json.loads(line[6:])["choices"][0]["text"]
        resp.close()
    for _ in range(50):
        if await _running(sim_fleet) == 0:
            break
        await asyncio.sleep(0.02)
    assert await _running(sim_fleet) == 0
    # The client went away: not the replica's failure (no breaker strike, no retry elsewhere).
    assert [h.circuit.failures for h in router.replicas.by_id.values()] == [0]
    families = [m for m in router.metrics.registry.collect() if m.name.endswith("_retries")]
    retries = [s.value for m in families for s in m.samples if s.name.endswith("_total")]
    assert sum(retries) == 0, retries


async def test_round_robin_spreads_requests_evenly_over_replicas(sim_fleet):
    router = await sim_fleet.start(4, policy="round_robin")
    client = oai(router)
    await asyncio.gather(*(client.completions.create(model="sim", prompt=f"p{i}", max_tokens=2) for i in range(40)))
    assert sorted(h.routed for h in router.replicas.by_id.values()) == [10, 10, 10, 10]


async def test_power_of_two_spreads_concurrent_load(sim_fleet):
    router = await sim_fleet.start(4, policy="power_of_two")
    # A replica whose load stream has not reported yet is stale, and power-of-two prefers fresh ones (by
    # design): on a busy machine the first reports can lag the router's start, so wait for all four.
    for _ in range(200):
        if not any(h.load_stale for h in router.replicas.by_id.values()):
            break
        await asyncio.sleep(0.05)
    client = oai(router)
    await asyncio.gather(*(client.completions.create(model="sim", prompt=f"p{i}", max_tokens=20) for i in range(80)))
    routed = sorted(h.routed for h in router.replicas.by_id.values())
    assert sum(routed) == 80 and routed[0] >= 12, routed


async def test_a_dead_replica_before_the_first_token_is_retried_elsewhere(sim_fleet):
    router = await sim_fleet.start(3, policy="round_robin")
    await sim_fleet.servers[1].stop(0)  # r1 refuses connections from now on
    client = oai(router)
    results = await asyncio.gather(*(client.completions.create(model="sim", prompt=f"p{i}", max_tokens=3) for i in range(12)))
    assert all(r.usage.completion_tokens == 3 for r in results)
    assert router.replicas.by_id["r1"].routed >= 1  # it was tried, and the requests still succeeded
