"""OpenAI SSE events -> the public gRPC API's ``GenerateChunk`` (for routers relaying to gRPC clients).

The engine answers in OpenAI's streaming format whoever the client is; for a
gRPC client (``Format.PROTO``) the replica re-encodes each event here, once,
so the router forwards bytes for both APIs.  One event becomes one
``GenerateChunk`` per choice that carries something (text, reasoning, tool-call
deltas, logprobs, a finish reason); the usage event is folded into the last
chunk of the same engine chunk (the finishing one), as the public API promises.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.proto import inference_pb2


def _logprobs(chunk: inference_pb2.GenerateChunk, lp: Any) -> None:
    if not isinstance(lp, dict):
        return
    if isinstance(lp.get("content"), list):  # chat
        for item in lp["content"]:
            entry = chunk.logprobs.add(token=item.get("token", ""), logprob=_finite(item.get("logprob")))
            for top in item.get("top_logprobs") or ():
                entry.top_logprobs.add(token=top.get("token", ""), logprob=_finite(top.get("logprob")))
    elif isinstance(lp.get("tokens"), list):  # completions
        tops = lp.get("top_logprobs") or []
        for i, (token, value) in enumerate(zip(lp["tokens"], lp.get("token_logprobs") or [], strict=False)):
            entry = chunk.logprobs.add(token=token, logprob=_finite(value))
            top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            for t, v in top.items():
                entry.top_logprobs.add(token=t, logprob=_finite(v))


def _finite(v: Any) -> float:
    return float(v) if isinstance(v, int | float) else float("-inf")


def _choice(request_id: str, choice: dict[str, Any]) -> inference_pb2.GenerateChunk | None:
    out = inference_pb2.GenerateChunk(request_id=request_id, index=int(choice.get("index") or 0))
    delta = choice.get("delta")
    if isinstance(delta, dict):  # chat
        out.text = delta.get("content") or ""
        out.reasoning = delta.get("reasoning") or delta.get("reasoning_content") or ""
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") or {}
            out.tool_calls.add(
                index=int(call.get("index") or 0), id=call.get("id") or "", name=fn.get("name") or "", arguments=fn.get("arguments") or ""
            )
    else:  # completions
        out.text = choice.get("text") or ""
    _logprobs(out, choice.get("logprobs"))
    out.finish_reason = choice.get("finish_reason") or ""
    if not (out.text or out.reasoning or out.tool_calls or out.logprobs or out.finish_reason):
        return None
    return out


def _usage(u: dict[str, Any]) -> inference_pb2.Usage:
    details = u.get("prompt_tokens_details") or {}
    return inference_pb2.Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
        cached_prompt_tokens=int(details.get("cached_tokens") or 0),
    )


def sse_to_proto(request_id: str, data: bytes, token_ids: list[int]) -> tuple[list[bytes], dict[str, Any] | None]:
    """One engine chunk's SSE events -> serialized GenerateChunks, and the error object of an error event.

    ``token_ids`` (the engine's, n=1) go on the first chunk of choice 0.
    """
    out: list[inference_pb2.GenerateChunk] = []
    usage = None
    for event in data.split(b"\n\n"):
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            continue
        obj = json.loads(event[6:])
        if "error" in obj:
            return [c.SerializeToString() for c in out], obj
        for choice in obj.get("choices") or ():
            c = _choice(request_id, choice)
            if c is not None:
                out.append(c)
        if obj.get("usage"):
            usage = _usage(obj["usage"])
    if token_ids:
        first = next((c for c in out if c.index == 0), None)
        if first is None:
            first = inference_pb2.GenerateChunk(request_id=request_id)
            out.insert(0, first)
        first.token_ids.extend(token_ids)
    if usage is not None:
        if not out:
            out.append(inference_pb2.GenerateChunk(request_id=request_id))
        out[-1].usage.CopyFrom(usage)
    return [c.SerializeToString() for c in out], None
