"""The sim engine's OpenAI layer: the replica contract in small, refusing by name what it cannot honour."""

import json

import pytest

from cluster.engine.base import OpenAICall, Resume
from cluster.engine.sim import SimEngine, SimParams

pytestmark = pytest.mark.asyncio

MSG = [{"role": "user", "content": "hello there"}]


async def serve(engine, body, endpoint="chat", resume=None, rid="r"):
    return [c async for c in engine.serve(OpenAICall(rid, endpoint, {"model": "sim", **body}, resume))]


def events(chunks):
    data = b"".join(c.data for c in chunks)
    return [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": MSG, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": MSG, "logprobs": True}, "logprobs"),
        ({"messages": MSG, "logit_bias": {"1": 5}}, "logit_bias"),
        ({"messages": MSG, "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": MSG, "n": 2}, "n"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": []}]}, "messages[0].tool_calls"),
        ({"messages": MSG, "temperature": 3}, "temperature"),
        ({"messages": MSG, "stream_options": {"continuous_usage_stats": True}}, "stream_options"),
    ],
)
async def test_every_field_the_sim_cannot_honour_is_a_400_naming_it(body, param):
    engine = SimEngine(SimParams(time_scale=0.0))
    (chunk,) = await serve(engine, body)
    err = json.loads(chunk.data)["error"]
    assert chunk.status == err["code"] == 400 and err["param"] == param and err["message"].startswith(param)
    assert engine.load().running == engine.load().waiting == 0


async def test_a_stream_has_vllms_shape_one_id_and_the_facts_the_router_reads():
    engine = SimEngine(SimParams(time_scale=0.0))
    chunks = await serve(engine, {"messages": MSG, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}, rid="x")
    evs = events(chunks)
    assert {e["id"] for e in evs} == {"chatcmpl-x"} and evs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert evs[-1]["usage"]["completion_tokens"] == 5 and chunks[-1].data.endswith(b"data: [DONE]\n\n")
    assert chunks[0].status == 200 and chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 5
    assert "".join(c.text for c in chunks) == "".join(ch["delta"]["content"] for e in evs for ch in e["choices"])
    assert sum(len(c.token_ids) for c in chunks) == 5


async def test_default_sampling_fills_what_a_request_leaves_unset():
    greedy = SimEngine(SimParams(time_scale=0.0), default_sampling={"temperature": 0})
    a = await serve(greedy, {"messages": MSG, "max_tokens": 6}, rid="a")
    b = await serve(greedy, {"messages": MSG, "max_tokens": 6}, rid="b")
    assert json.loads(a[-1].data)["choices"] == json.loads(b[-1].data)["choices"]  # greedy: same prompt, same words
    sampled = SimEngine(SimParams(time_scale=0.0))
    c = await serve(sampled, {"messages": MSG, "max_tokens": 6}, rid="a")
    d = await serve(sampled, {"messages": MSG, "max_tokens": 6}, rid="b")
    assert json.loads(c[-1].data)["choices"] != json.loads(d[-1].data)["choices"]


async def test_completions_default_to_16_tokens_and_chat_to_the_rest_of_the_context():
    engine = SimEngine(SimParams(time_scale=0.0, max_model_len=64))
    (comp,) = [c for c in await serve(engine, {"prompt": "once upon"}, "completions") if c.data]
    assert json.loads(comp.data)["usage"]["completion_tokens"] == 16
    (chat,) = [c for c in await serve(engine, {"messages": MSG}) if c.data]
    usage = json.loads(chat.data)["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 64


async def test_a_resumed_stream_repeats_nothing_and_reports_usage_for_the_whole_request():
    engine = SimEngine(SimParams(time_scale=0.0))
    body = {"messages": MSG, "max_tokens": 8, "seed": 3, "stream": True, "stream_options": {"include_usage": True}}
    full = await serve(engine, body, rid="f")
    sent = full[:3]
    ids, text = [t for c in sent for t in c.token_ids], "".join(c.text for c in sent)
    rest = await serve(engine, body, resume=Resume(ids, text), rid="g")
    assert ids + [t for c in rest for t in c.token_ids] == [t for c in full for t in c.token_ids]
    assert text + "".join(c.text for c in rest) == "".join(c.text for c in full)
    assert not any("role" in ch["delta"] for e in events(rest) for ch in e.get("choices", []))
    assert events(rest)[-1]["usage"] == events(full)[-1]["usage"]


async def test_tokenize_and_detokenize_answer_as_vllms_endpoints_do():
    engine = SimEngine(SimParams(time_scale=0.0))
    (tok,) = await serve(engine, {"prompt": "hello world"}, "tokenize")
    body = json.loads(tok.data)
    assert tok.status == 200 and body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == engine.max_model_len
    (de,) = await serve(engine, {"tokens": [engine._codec.word_ids["sun"], engine._codec.word_ids["tree"]]}, "detokenize")
    assert json.loads(de.data) == {"prompt": "sun tree"}
