"""For gRPC clients the replica re-encodes OpenAI SSE events as public GenerateChunks, once, so routers relay bytes."""

import json

from cluster.engine.base import Chunk
from cluster.proto import inference_pb2, replica_pb2
from cluster.replica.server import encode


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chunks(out: list[replica_pb2.OpenAIChunk]) -> list[inference_pb2.GenerateChunk]:
    return [inference_pb2.GenerateChunk.FromString(c.data) for c in out]


def test_tool_call_deltas_logprobs_choice_index_and_usage_reach_the_grpc_client():
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    lp = {"content": [{"token": "x", "logprob": -0.5, "top_logprobs": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.0}]}]}
    data = sse(
        {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "logprobs": lp, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}}},
    )
    out = encode(Chunk(data=data, status=200, token_ids=[9], finish_reason="stop", completion_tokens=2), replica_pb2.PROTO, "r")
    a, b = chunks(out)
    assert (a.tool_calls[0].id, a.tool_calls[0].name, a.tool_calls[0].arguments, list(a.token_ids)) == ("c1", "f", '{"a"', [9])
    assert [(t.token, t.logprob) for t in a.logprobs[0].top_logprobs] == [("x", -0.5), ("y", -1.0)]
    assert (b.index, b.text, b.finish_reason) == (1, "hi", "stop")
    assert (b.usage.prompt_tokens, b.usage.completion_tokens, b.usage.cached_prompt_tokens) == (4, 2, 3)  # folded into the last
    assert out[0].status == 200 and out[-1].finish_reason == "stop" and out[-1].completion_tokens == 2  # the router's facts


def test_completion_logprobs_become_token_logprobs():
    lp = {"tokens": [" a"], "token_logprobs": [-0.25], "top_logprobs": [{" a": -0.25, " b": -2.0}]}
    (c,) = chunks(encode(Chunk(data=sse({"choices": [{"index": 0, "text": " a", "logprobs": lp}]})), replica_pb2.PROTO, "r"))
    assert c.text == " a" and c.logprobs[0].token == " a" and {t.token for t in c.logprobs[0].top_logprobs} == {" a", " b"}


def test_an_error_event_becomes_an_error_chunk_and_http_clients_get_the_bytes_unchanged():
    data = sse({"error": {"message": "boom", "type": "InternalServerError", "code": 500}})
    (err,) = encode(Chunk(data=data), replica_pb2.PROTO, "r")
    assert err.status == 500 and json.loads(err.data)["error"]["message"] == "boom"
    (same,) = encode(Chunk(data=data, status=200), replica_pb2.SSE, "r")
    assert same.data == data and same.status == 200
