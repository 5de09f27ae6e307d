"""What the router reads of a request, for both front ends; the rest is the engine's.

The router relays OpenAI request bodies to a replica of the body's model,
whose engine serves them (vLLM's own OpenAI layer: it validates every field
and refuses with vLLM's messages).  Here the router parses only what it needs
itself: ``model`` (where to route), ``stream``, ``n``,
``max_tokens`` / ``max_completion_tokens`` (the token budget charged to the
tenant and the admission queue), the prompt text (routing: prefix affinity),
the session key (``user`` or the ``x-session-id`` header), and the request id
(the body's ``request_id``, else ``x-request-id``, else a fresh one; set in
the relayed body so every replica, also a resuming one, answers with the same
response id).

It refuses at once what would break a parser further on (a body that is not
UTF-8, not JSON, nested too deep, a number too large for a float, a lone
surrogate: :mod:`cluster.common.openai_body`), or a prompt that certainly
cannot fit the model's context: HTTP 400 / INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

# The body checks are shared with the replica's own HTTP API (cluster.replica.http_api).
from cluster.common.openai_body import InvalidRequest as InvalidRequest
from cluster.common.openai_body import check_values as check_values
from cluster.common.openai_body import parse_body as parse_body

#: Endpoints (the replica contract's names).
CHAT, COMPLETIONS, TOKENIZE, DETOKENIZE, EMBEDDINGS = "chat", "completions", "tokenize", "detokenize", "embeddings"
MAX_TOKENS_CAP = 1 << 20
#: A request id JSON writes as it is, between quotes (ours, hex; most clients' uuids): no encoder call.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]+").fullmatch


@dataclass(slots=True)
class RelayRequest:
    """One request as the router routes it: the few fields it reads, and the body it relays."""

    model: str
    request_id: str
    endpoint: str
    body: dict[str, Any]
    stream: bool = False
    n: int = 1
    #: Token budget (tenant TPM charge, admission cost): the request's limit, or the router's default.
    max_tokens: int = 256
    #: Characters of prompt text (the limits' token estimate).
    prompt_chars: int = 0
    routing_text: str = ""
    session_id: str | None = None
    #: Per-request routing policy (``x-routing-policy`` header / metadata); None: the configured one.
    routing_policy: str | None = None
    #: The replica encodes for this client: replica_pb2.SSE (HTTP) or PROTO (gRPC).
    format: int = 0
    #: The LoRA adapter named in the body's ``model`` (``model`` is then its base model); None: a model itself.
    adapter: str | None = None
    #: Tokens relayed to the client so far, and the whole request's usage once its finish chunk passed (the
    #: tenant's token charge); kept by the balancer for every chunk it relays.
    tokens_sent: int = 0
    tokens_used: int | None = None
    #: Where the HTTP front lets the balancer write the rest of an SSE stream itself, once the response's
    #: headers are out (cluster/router/http_server.py ``SseSink``); None: every chunk is yielded.
    sink: Any = None
    #: The client's own bytes of ``body`` when the router changed nothing but add ``request_id``: relayed as
    #: they are, the id spliced in (no second JSON encoding); None: ``body`` is encoded anew.
    raw: bytes | None = None

    def encoded_body(self) -> bytes:
        raw = self.raw
        if raw is not None:
            if self.endpoint not in (CHAT, COMPLETIONS):
                return raw
            rid = self.request_id
            quoted = b'"%s"' % rid.encode() if _PLAIN_ID(rid) else json.dumps(rid).encode()
            return b'{"request_id":' + quoted + b"," + raw.lstrip()[1:]
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()

    def note(self, chunk: Any) -> None:
        """Count one relayed chunk (an ``OpenAIChunk``) toward the request's token charge."""
        self.tokens_sent += len(chunk.token_ids) or (1 if chunk.text else 0)
        if chunk.finish_reason and self.tokens_used is None:
            self.tokens_used = chunk.prompt_tokens + chunk.completion_tokens


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def routing_text(endpoint: str, body: dict[str, Any]) -> str:
    """The prompt's text, for prefix routing and the token estimate (no tokenizer here)."""
    if endpoint == CHAT or (endpoint == TOKENIZE and "messages" in body):
        msgs = body.get("messages")
        return "".join(_text_of(m.get("content")) for m in msgs if isinstance(m, dict)) if isinstance(msgs, list) else ""
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "".join(p for p in prompt if isinstance(p, str))
    return ""


def _budget(body: dict[str, Any], default: int) -> int:
    v = body.get("max_completion_tokens")
    if type(v) is not int or v <= 0:  # bool is not int here; an int subclass cannot come out of JSON
        v = body.get("max_tokens")
        if type(v) is not int or v <= 0:
            return default
    return v if v < MAX_TOKENS_CAP else MAX_TOKENS_CAP


def relay_request(
    endpoint: str,
    body: dict[str, Any],
    *,
    models: Collection[str],
    request_id: str | None = None,
    session_id: str | None = None,
    routing_policy: str | None = None,
    default_max_tokens: int = 256,
    fmt: int = 0,
    raw: bytes | None = None,
) -> RelayRequest:
    """Read what the router needs from ``body`` (already checked by :func:`parse_body`); ``raw``: the bytes
    ``body`` was parsed from, relayed as they are when the router needs to change nothing else."""
    model = body.get("model")
    if raw is not None and ("request_id" in body or model is None):
        raw = None  # the body changes (the id replaced, the model filled in): encoded anew
    if model is None and len(models) == 1:
        model = body["model"] = next(iter(models))  # vLLM's server takes its only model too
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model", "is required (a string; see GET /v1/models)")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream", "must be a boolean")
    n = body.get("n", 1)
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    rid = body.get("request_id")
    if not rid or not isinstance(rid, str):
        rid = request_id
    if rid:
        if len(rid) > 128 or not rid.isprintable():
            raise InvalidRequest("request_id", "at most 128 printable characters")
    else:
        rid = os.urandom(16).hex()  # as uuid4().hex reads, a quarter of its cost
    if endpoint in (CHAT, COMPLETIONS):
        body["request_id"] = rid
    user = body.get("user")
    if routing_policy is not None:
        from cluster.router.policies import POLICIES  # the registry (its modules import this one)

        if routing_policy not in POLICIES:
            raise InvalidRequest("x-routing-policy", f"unknown policy {routing_policy!r}; choose one of {', '.join(POLICIES)}")
    text = routing_text(endpoint, body)
    return RelayRequest(
        model=model,
        request_id=rid,
        endpoint=endpoint,
        body=body,
        stream=bool(stream),
        n=n,
        max_tokens=_budget(body, default_max_tokens) * n if endpoint in (CHAT, COMPLETIONS) else 0,
        prompt_chars=len(text),
        routing_text=text,
        session_id=session_id or (user if isinstance(user, str) and user else None),
        routing_policy=routing_policy,
        format=fmt,
        raw=raw,
    )


#: No tokenizer covers more than this many characters per token on ordinary text;
#: the router's prompt check is only a cheap bound, the engine checks exactly.
MAX_CHARS_PER_TOKEN = 8


def check_context(req: RelayRequest, max_model_len: int) -> None:
    """Refuse a prompt that cannot fit the model's context (0: unknown, no check)."""
    if max_model_len <= 0:
        return
    chars = req.prompt_chars
    if chars > max_model_len * MAX_CHARS_PER_TOKEN:
        raise InvalidRequest(
            "messages" if req.endpoint == CHAT else "prompt",
            f"is {chars} characters, certainly longer than the model's context (max_model_len {max_model_len} tokens)",
        )
