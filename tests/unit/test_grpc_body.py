"""A public GenerateRequest becomes the OpenAI body it stands for; its typed fields win over extra_json."""

import json

import pytest

from cluster.client import build_request
from cluster.router.grpc_body import openai_body
from cluster.router.validation import InvalidRequest


def test_typed_chat_fields_map_to_their_openai_names():
    req = build_request("hi", model="m", chat=True, max_tokens=5, temperature=0.7, seed=3)
    s = req.sampling
    s.top_p, s.min_p, s.presence_penalty, s.min_tokens, s.n, s.ignore_eos = 0.9, 0.1, 0.5, 2, 2, True
    s.stop_token_ids.extend([7, 8])
    s.logit_bias[42] = -100
    req.tools_json = json.dumps([{"type": "function", "function": {"name": "f"}}])
    req.tool_choice = "f"
    req.parallel_tool_calls = False
    req.logprobs, req.top_logprobs = True, 2
    req.response_format_json = '{"type": "json_object"}'
    req.extra_json = '{"repetition_penalty": 1.1, "temperature": 2.0, "stream": false}'
    endpoint, body = openai_body(req)
    assert endpoint == "chat"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["max_tokens"], body["temperature"], body["seed"], body["top_p"], body["min_p"]) == (5, 0.7, 3, 0.9, 0.1)
    assert (body["presence_penalty"], body["min_tokens"], body["n"], body["ignore_eos"]) == (0.5, 2, 2, True)
    assert body["stop_token_ids"] == [7, 8] and body["logit_bias"] == {"42": -100.0}
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}} and body["parallel_tool_calls"] is False
    assert (body["logprobs"], body["top_logprobs"], body["response_format"]) == (True, 2, {"type": "json_object"})
    assert body["repetition_penalty"] == 1.1  # the long tail, from extra_json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}  # a gRPC call always streams


def test_a_completion_takes_echo_and_the_number_of_logprobs():
    req = build_request("once", model="m", chat=False)
    req.echo, req.logprobs, req.top_logprobs = True, True, 3
    endpoint, body = openai_body(req)
    assert endpoint == "completions" and body["prompt"] == "once" and body["echo"] is True and body["logprobs"] == 3


def test_history_with_tool_calls_and_tool_results_is_kept_whole():
    req = build_request("weather?", model="m", chat=True)
    call = req.chat.messages.add(role="assistant")
    call.tool_calls.add(id="c1", name="get_weather", arguments='{"city": "Paris"}')
    req.chat.messages.add(role="tool", tool_call_id="c1", content="sunny")
    _, body = openai_body(req)
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    }
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


@pytest.mark.parametrize(
    ("edit", "param"),
    [
        (lambda r: setattr(r, "tools_json", "[not json"), "tools_json"),
        (lambda r: setattr(r, "extra_json", "[1]"), "extra_json"),
        (lambda r: setattr(r.sampling, "temperature", float("inf")), "temperature"),
        (lambda r: r.ClearField("chat"), "prompt"),
    ],
)
def test_what_cannot_become_a_body_is_invalid_argument_naming_the_field(edit, param):
    req = build_request("hi", model="m", chat=True)
    edit(req)
    with pytest.raises(InvalidRequest) as err:
        openai_body(req)
    assert err.value.param == param
