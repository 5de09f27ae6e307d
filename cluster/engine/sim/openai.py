"""The sim engine's OpenAI layer: the replica contract in small.

It answers chat, completions, tokenize and detokenize bodies in the shapes
vLLM's server uses (ids ``chatcmpl-<request_id>``, SSE chunks, ``usage``),
honouring only what the sim can: ``messages`` / ``prompt``, ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``top_p``, ``top_k`` (accepted,
with no effect on the sim's word draws beyond greedy when temperature is 0),
``seed``, ``stop``, ``stream``, ``stream_options.include_usage``, ``n`` = 1,
``user``, ``request_id``.  Any other field present (``tools``,
``response_format``, ``logprobs``, ``logit_bias``, penalties...) is refused
with a 400 naming it: the sim never silently ignores what a client asked for.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from cluster.engine.base import (
    CHAT,
    COMPLETIONS,
    DETOKENIZE,
    TOKENIZE,
    ChatMessage,
    Chunk,
    EngineRequest,
    EngineRequestError,
    OpenAICall,
    Sampling,
    error_chunk,
)

if TYPE_CHECKING:
    from cluster.engine.sim.engine import SimEngine

ROLES = ("system", "user", "assistant", "developer", "tool")
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", "n", "user", "request_id"}
HONOURED = {
    CHAT: _COMMON | {"messages", "max_completion_tokens"},
    COMPLETIONS: _COMMON | {"prompt"},
    TOKENIZE: {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"},
    DETOKENIZE: {"model", "tokens"},
}
MAX_STOP = 16
#: How often a non-streamed request tells the router it is still being generated.
PROGRESS_INTERVAL_S = 1.0
MAX_SEED = (1 << 63) - 1


class Bad(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _text(param: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise Bad(param, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise Bad(param, "must not be empty")
    if "\x00" in value:
        raise Bad(param, "must not contain NUL characters")
    return unicodedata.normalize("NFC", value) if not value.isascii() else value


def _number(param: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not lo <= value <= hi:
        raise Bad(param, f"must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _integer(param: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Bad(param, f"must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _message(i: int, m: object) -> ChatMessage:
    if not isinstance(m, dict):
        raise Bad(f"messages[{i}]", "must be an object with role and content")
    extra = sorted(k for k, v in m.items() if k not in ("role", "content", "name") and v is not None)
    if extra:
        raise Bad(f"messages[{i}].{extra[0]}", "is not supported by the sim engine")
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise Bad(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Bad(f"messages[{i}].content[{j}]", "only text content parts are supported by the sim engine")
            parts.append(_text(f"messages[{i}].content[{j}].text", part.get("text"), allow_empty=True))
        content = "".join(parts)
    return ChatMessage(role=role, content=_text(f"messages[{i}].content", "" if content is None else content, allow_empty=True))


def _refuse_unknown(endpoint: str, body: dict[str, Any]) -> None:
    for key, value in body.items():
        if key not in HONOURED[endpoint] and value is not None:
            raise Bad(key, "is not supported by the sim engine (use a vLLM model for it)")
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict) or any(k != "include_usage" for k in so) or not isinstance(so.get("include_usage", False), bool):
            raise Bad("stream_options", 'the sim engine supports only {"include_usage": true|false}')
    if body.get("n") not in (None, 1):
        raise Bad("n", "the sim engine supports only n=1")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise Bad("stream", "must be a boolean")


def _sampling(body: dict[str, Any], defaults: dict[str, Any], max_tokens: int) -> Sampling:
    get = lambda k: body[k] if body.get(k) is not None else defaults.get(k)  # noqa: E731
    s = Sampling(max_tokens=max_tokens)
    if get("temperature") is not None:
        s.temperature = _number("temperature", get("temperature"), 0.0, 2.0)
    if get("top_p") is not None:
        s.top_p = _number("top_p", get("top_p"), 1e-9, 1.0)
    if get("top_k") is not None:
        k = _integer("top_k", get("top_k"), -1, 1 << 20)
        s.top_k = -1 if k <= 0 else k
    if body.get("seed") is not None:
        s.seed = _integer("seed", body["seed"], -MAX_SEED, MAX_SEED)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOP:
            raise Bad("stop", f"must be a string or a list of at most {MAX_STOP} strings")
        s.stop = [_text("stop", x) for x in stops]
    return s


def engine_request(engine: SimEngine, call: OpenAICall, defaults: dict[str, Any]) -> EngineRequest:
    """The sim's token-level request for a chat or completions body; Bad naming a field."""
    body = call.body
    _refuse_unknown(call.endpoint, body)
    req = EngineRequest(request_id=call.request_id, sampling=Sampling())
    model = body.get("model")
    if isinstance(model, str) and model != engine.model_name and engine.adapters is not None:
        req.lora = model  # a LoRA adapter of this base model (the router routed it here)
    if call.endpoint == CHAT:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise Bad("messages", "must be a non-empty list")
        req.messages = [_message(i, m) for i, m in enumerate(msgs)]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        req.prompt = _text("prompt", prompt) if prompt is not None else None
        if req.prompt is None:
            raise Bad("prompt", "is required (a string)")
    limit = body.get("max_completion_tokens", body.get("max_tokens")) if call.endpoint == CHAT else body.get("max_tokens")
    if limit is None:
        limit = defaults.get("max_tokens")
    if limit is None:  # vLLM's defaults: the rest of the context for chat, 16 for completions
        limit = engine.max_model_len if call.endpoint == CHAT else 16
    req.sampling = _sampling(body, defaults, _integer("max_tokens", limit, 1, 1 << 30))
    if call.resume is not None:
        req.resume_token_ids = list(call.resume.token_ids)
        req.resume_text = call.resume.text
    return req


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached} if cached else None,
    }


async def serve(engine: SimEngine, call: OpenAICall, defaults: dict[str, Any]) -> AsyncIterator[Chunk]:
    """Answer one OpenAI call on the sim engine (see the module docstring)."""
    if call.endpoint in (TOKENIZE, DETOKENIZE):
        yield _tokens(engine, call)
        return
    if call.endpoint not in (CHAT, COMPLETIONS):
        yield error_chunk(f"the sim engine does not serve the {call.endpoint} endpoint", 404, "NotFoundError")
        return
    try:
        # The model name is the router's to check (it routed by it); a standalone
        # sim replica serves whatever name its router gives it.
        req = engine_request(engine, call, defaults)
        stream = engine.generate(req)
        chat = call.endpoint == CHAT
        rid = ("chatcmpl-" if chat else "cmpl-") + str(call.body.get("request_id") or call.request_id)
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time())}
        head["model"] = str(call.body.get("model") or engine.model_name)
        if call.body.get("stream"):
            so = call.body.get("stream_options") or {}
            async for chunk in _sse(stream, head, chat, call, bool(so.get("include_usage"))):
                yield chunk
        else:
            async for chunk in _whole(stream, head, chat, call):
                yield chunk
    except Bad as exc:
        yield error_chunk(str(exc), 400, param=exc.param)
    except EngineRequestError as exc:
        yield error_chunk(str(exc), 400)


def _whole_usage(call: OpenAICall, prompt: int, completion: int) -> tuple[int, int]:
    """Usage for the whole request: the sim counts resumed tokens as prompt, the contract as completion."""
    resumed = len(call.resume.token_ids) if call.resume is not None else 0
    return max(prompt - resumed, 0), completion + resumed


async def _sse(stream: AsyncIterator[Any], head: dict[str, Any], chat: bool, call: OpenAICall, usage: bool) -> AsyncIterator[Chunk]:
    first = call.resume is None
    status = 200
    async for d in stream:
        finish = d.finish_reason
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": d.text} if first else {"content": d.text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": d.text, "logprobs": None, "finish_reason": finish}
        first = False
        data = b"data: " + _dump({**head, "choices": [choice]}) + b"\n\n"
        chunk = Chunk(data=data, status=status, token_ids=list(d.token_ids), text=d.text)
        status = 0
        if finish is not None:
            prompt, completion = _whole_usage(call, d.prompt_tokens, d.completion_tokens)
            cached = min(d.cached_prompt_tokens, prompt)
            if usage:
                chunk.data += b"data: " + _dump({**head, "choices": [], "usage": _usage(prompt, completion, cached)}) + b"\n\n"
            chunk.data += b"data: [DONE]\n\n"
            chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens = finish, prompt, completion
            chunk.cached_prompt_tokens = cached
        yield chunk


async def _whole(stream: AsyncIterator[Any], head: dict[str, Any], chat: bool, call: OpenAICall) -> AsyncIterator[Chunk]:
    """The whole answer in one chunk, after empty progress chunks (the first token, then one a second)."""
    parts: list[str] = []
    last = None
    noted = 0.0
    async for d in stream:
        parts.append(d.text)
        last = d
        if d.finish_reason is None and time.monotonic() - noted >= PROGRESS_INTERVAL_S:
            noted = time.monotonic()
            yield Chunk(data=b"")
    assert last is not None and last.finish_reason is not None
    prompt, completion = _whole_usage(call, last.prompt_tokens, last.completion_tokens)
    cached = min(last.cached_prompt_tokens, prompt)
    text = "".join(parts)
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        obj = "chat.completion"
    else:
        choice, obj = {"index": 0, "text": text, "logprobs": None}, "text_completion"
    choice["finish_reason"] = last.finish_reason
    body = {**head, "object": obj, "choices": [choice], "usage": _usage(prompt, completion, cached)}
    yield Chunk(
        data=_dump(body),
        status=200,
        resumable=False,
        finish_reason=last.finish_reason,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=cached,
    )


def _tokens(engine: SimEngine, call: OpenAICall) -> Chunk:
    body = call.body
    try:
        _refuse_unknown(call.endpoint, body)
        if call.endpoint == DETOKENIZE:
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                raise Bad("tokens", "must be a list of integers")
            text = engine.detokenize(tokens)
            return Chunk(data=_dump({"prompt": text}), status=200, resumable=False)
        if "messages" in body:
            req = engine_request(engine, OpenAICall(call.request_id, CHAT, {"messages": body["messages"]}), {})
        else:
            req = EngineRequest(request_id=call.request_id, sampling=Sampling(), prompt=_text("prompt", body.get("prompt")))
        ids = engine.prompt_token_ids(req)
        out = {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids, "token_strs": None}
        return Chunk(data=_dump(out), status=200, resumable=False)
    except Bad as exc:
        return error_chunk(str(exc), 400, param=exc.param)
