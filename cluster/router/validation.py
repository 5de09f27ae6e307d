"""Request validation shared by the gRPC and HTTP front ends.

Both front ends turn their input into a :class:`ValidRequest` here, so a bad
parameter gets the same message on either path: gRPC answers
INVALID_ARGUMENT, HTTP answers 400 in OpenAI's error shape.  The message always
names the parameter.  :func:`check_context` refuses what cannot fit the
model's context (``max_model_len`` of its replicas, from the endpoint set)
without a tokenizer; the exact prompt length in tokens is checked by the
engine and reported the same way.
"""

from __future__ import annotations

import math
import unicodedata
import uuid
from dataclasses import dataclass, field

from cluster.common.chat import ChatMessage

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOP = 16
MAX_STOP_LEN = 256
MAX_TOKENS_CAP = 1 << 20
MAX_SEED = (1 << 63) - 1
MAX_PROMPT_CHARS = 2_000_000
MAX_MESSAGES = 4096


class InvalidRequest(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(slots=True)
class ValidRequest:
    model: str
    request_id: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    session_id: str | None = None
    #: Per-request routing policy (``x-routing-policy`` header / metadata); None: the configured one.
    routing_policy: str | None = None

    @property
    def routing_text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "".join(m.content for m in self.messages or ())


def _text(param: str, value: object, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(param, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidRequest(param, "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(param, f"is longer than {MAX_PROMPT_CHARS} characters")
    if "\x00" in value:
        raise InvalidRequest(param, "must not contain NUL characters")
    # Lone surrogates cannot be encoded as UTF-8 and would fail deep in the tokenizer.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(param, "is not valid Unicode (lone surrogate)") from None
    return unicodedata.normalize("NFC", value) if not value.isascii() else value


def _number(param: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(param, f"must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v > hi or v < lo or (lo_open and v == lo):
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise InvalidRequest(param, f"must be in {lo_s}, {hi}], got {value}")
    return v


def _integer(param: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest(param, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidRequest(param, f"must be in [{lo}, {hi}], got {value}")
    return value


def validate(
    *,
    model: object,
    prompt: object = None,
    messages: object = None,
    max_tokens: object = None,
    temperature: object = None,
    top_p: object = None,
    top_k: object = None,
    seed: object = None,
    stop: object = None,
    request_id: object = None,
    session_id: str | None = None,
    default_max_tokens: int = 256,
    routing_policy: str | None = None,
) -> ValidRequest:
    """Check every parameter; raise InvalidRequest naming the first bad one."""
    model_s = _text("model", model)
    if (prompt is None) == (messages is None):
        raise InvalidRequest("prompt", "give exactly one of prompt or messages")
    req = ValidRequest(model=model_s, request_id="")
    if prompt is not None:
        req.prompt = _text("prompt", prompt)
    else:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages", "must be a non-empty list")
        if len(messages) > MAX_MESSAGES:
            raise InvalidRequest("messages", f"at most {MAX_MESSAGES} messages")
        req.messages = [_message(i, m) for i, m in enumerate(messages)]
    req.max_tokens = default_max_tokens if max_tokens is None else _integer("max_tokens", max_tokens, 1, MAX_TOKENS_CAP)
    req.temperature = 1.0 if temperature is None else _number("temperature", temperature, 0.0, 2.0)
    req.top_p = 1.0 if top_p is None else _number("top_p", top_p, 0.0, 1.0, lo_open=True)
    if top_k is not None:
        k = _integer("top_k", top_k, -1, 1 << 20)
        req.top_k = -1 if k <= 0 else k
    if seed is not None:
        req.seed = _integer("seed", seed, 0, MAX_SEED)
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list):
            raise InvalidRequest("stop", "must be a string or a list of strings")
        if len(stops) > MAX_STOP:
            raise InvalidRequest("stop", f"at most {MAX_STOP} stop strings")
        req.stop = [_text("stop", s) for s in stops]
        if any(len(s) > MAX_STOP_LEN for s in req.stop):
            raise InvalidRequest("stop", f"each stop string at most {MAX_STOP_LEN} characters")
    if request_id:
        rid = _text("request_id", request_id)
        if len(rid) > 128 or not rid.isprintable():
            raise InvalidRequest("request_id", "at most 128 printable characters")
        req.request_id = rid
    else:
        req.request_id = uuid.uuid4().hex
    req.session_id = session_id
    if routing_policy is not None:
        from cluster.router.policies import POLICIES

        if routing_policy not in POLICIES:
            raise InvalidRequest("x-routing-policy", f"unknown policy {routing_policy!r}; choose one of {', '.join(POLICIES)}")
        req.routing_policy = routing_policy
    return req


def _message(i: int, m: object) -> ChatMessage:
    if isinstance(m, ChatMessage):
        role, content = m.role, m.content
    elif isinstance(m, dict):
        role, content = m.get("role"), m.get("content")
    else:
        raise InvalidRequest(f"messages[{i}]", "must be an object with role and content")
    if role not in ROLES:
        raise InvalidRequest(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(f"messages[{i}].content[{j}]", "only text content parts are supported")
            parts.append(_text(f"messages[{i}].content[{j}].text", part.get("text"), allow_empty=True))
        content = "".join(parts)
    elif content is None:
        content = ""
    return ChatMessage(role=role, content=_text(f"messages[{i}].content", content, allow_empty=True))


#: No tokenizer covers more than this many characters per token on ordinary text;
#: the router's prompt check is only a cheap bound, the engine checks exactly.
MAX_CHARS_PER_TOKEN = 8


def check_context(req: ValidRequest, max_model_len: int) -> None:
    """Refuse a prompt that cannot fit the model's context (0: unknown, no check)."""
    if max_model_len <= 0:
        return
    # max_tokens beyond the context is not refused: generation stops at the
    # context's end with finish_reason "length", as the engines do.
    chars = len(req.routing_text)
    if chars > max_model_len * MAX_CHARS_PER_TOKEN:
        raise InvalidRequest(
            "messages" if req.messages is not None else "prompt",
            f"is {chars} characters, certainly longer than the model's context (max_model_len {max_model_len} tokens)",
        )
