"""The OpenAI request body a public gRPC ``GenerateRequest`` stands for.

The gRPC API carries the same capabilities as the HTTP one by becoming the
same request: a chat (``chat``) or completions (``prompt``) body, typed fields
mapped to their OpenAI names, ``extra_json`` merged in for the long tail (the
typed fields win), always streamed with usage.  The replica's engine validates
it like any HTTP body, so both APIs accept and refuse alike.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.proto import inference_pb2
from cluster.router.validation import CHAT, COMPLETIONS, InvalidRequest, check_values

_SAMPLING_FLOATS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_SAMPLING_INTS = ("max_tokens", "top_k", "seed", "min_tokens", "n", "max_completion_tokens")


def _float(v: float) -> float:
    """A proto float (32 bits) as the decimal the client wrote (0.7, not 0.699999988)."""
    return float(f"{v:.7g}")


def _json_field(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequest(name, "is not valid JSON") from None


def _message(m: inference_pb2.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
        if not m.content:
            out["content"] = None
    return out


def _sampling(s: inference_pb2.SamplingParams, body: dict[str, Any]) -> None:
    for name in _SAMPLING_FLOATS:
        if s.HasField(name):
            body[name] = _float(getattr(s, name))
    for name in _SAMPLING_INTS:
        if s.HasField(name):
            body[name] = getattr(s, name)
    if s.stop:
        body["stop"] = list(s.stop)
    if s.stop_token_ids:
        body["stop_token_ids"] = list(s.stop_token_ids)
    if s.HasField("ignore_eos"):
        body["ignore_eos"] = s.ignore_eos
    if s.logit_bias:
        body["logit_bias"] = {str(k): _float(v) for k, v in s.logit_bias.items()}


def _chat_fields(r: inference_pb2.GenerateRequest, body: dict[str, Any]) -> None:
    body["messages"] = [_message(m) for m in r.chat.messages]
    if r.tools_json:
        body["tools"] = _json_field("tools_json", r.tools_json)
    if r.tool_choice:
        named = r.tool_choice not in ("none", "auto", "required")
        body["tool_choice"] = {"type": "function", "function": {"name": r.tool_choice}} if named else r.tool_choice
    if r.HasField("parallel_tool_calls"):
        body["parallel_tool_calls"] = r.parallel_tool_calls
    if r.HasField("logprobs"):
        body["logprobs"] = r.logprobs
    if r.HasField("top_logprobs"):
        body["top_logprobs"] = r.top_logprobs


def _completion_fields(r: inference_pb2.GenerateRequest, body: dict[str, Any]) -> None:
    body["prompt"] = r.prompt
    for name in ("tools_json", "tool_choice"):
        if getattr(r, name):
            raise InvalidRequest(name, "is for chat requests (set chat, not prompt)")
    if (r.HasField("logprobs") and r.logprobs) or r.HasField("top_logprobs"):
        body["logprobs"] = r.top_logprobs  # completions: the number of alternatives (0: the sampled token's only)
    if r.HasField("echo"):
        body["echo"] = r.echo


def openai_body(r: inference_pb2.GenerateRequest) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) for ``r``; InvalidRequest naming a field that cannot be turned into one."""
    which = r.WhichOneof("input")
    if which is None:
        raise InvalidRequest("prompt", "give exactly one of prompt or chat")
    body: dict[str, Any] = {}
    if r.extra_json:
        extra = _json_field("extra_json", r.extra_json)
        if not isinstance(extra, dict):
            raise InvalidRequest("extra_json", "must be a JSON object")
        body.update(extra)
    body["model"] = r.model
    _sampling(r.sampling, body)
    if which == "chat":
        endpoint = CHAT
        _chat_fields(r, body)
    else:
        endpoint = COMPLETIONS
        _completion_fields(r, body)
    if r.response_format_json:
        body["response_format"] = _json_field("response_format_json", r.response_format_json)
    if r.request_id:
        body["request_id"] = r.request_id
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    check_values(body, big=True)  # a proto float may be inf or NaN
    return endpoint, body
