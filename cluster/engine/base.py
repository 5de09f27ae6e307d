"""The engine interface every backend implements.

An engine owns one model replica's compute and speaks OpenAI's API in it.  The
replica server (cluster.replica) drives it through:

- ``serve(call)`` -> async iterator of :class:`Chunk`: one OpenAI request
  (:class:`OpenAICall`: the endpoint and the client's JSON body, as the router
  relays it) answered with bytes ready for the client, as ``vllm serve`` would
  send them (SSE events when streaming, else the whole JSON body; an error is
  a non-2xx ``status`` with OpenAI's error JSON).  Beside the bytes each chunk
  carries the few facts the router reads without parsing them: the generated
  token ids and text behind it (for migration), finish reason and usage;
- ``load()`` -> :class:`LoadSnapshot`, cheap enough to call every 100 ms;
- ``model_card`` (``max_model_len``, ``root``, ``parent``, as vLLM's
  ``GET /v1/models`` lists them) and ``shutdown()``.

Closing the ``serve`` iterator (client cancel, deadline) aborts the request.
The router checks only what it needs (model, stream flag, token budget);
everything else is the engine's to honour or refuse, with a 4xx naming the
field: a request's bad input is never an engine failure.

**Resumed streams** (migration): ``call.resume`` holds the token ids and text
an earlier replica streamed.  The engine continues after them (prompt + those
tokens, ``max_tokens`` lowered by their count), sends first the text of those
tokens the client did not get (held back for a stop string), never repeats
what was sent (no second role chunk), keeps the response id (the body's
``request_id``), and reports usage for the whole request: ``prompt_tokens``
counts the original prompt only and ``completion_tokens`` includes the
resumed tokens.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.common.chat import ChatMessage

#: The OpenAI endpoints an engine may serve (replica.proto's Endpoint).
CHAT = "chat"
COMPLETIONS = "completions"
TOKENIZE = "tokenize"
DETOKENIZE = "detokenize"
EMBEDDINGS = "embeddings"
ENDPOINTS = (CHAT, COMPLETIONS, TOKENIZE, DETOKENIZE, EMBEDDINGS)

__all__ = [
    "ChatMessage",
    "Chunk",
    "Delta",
    "Engine",
    "EngineRequest",
    "EngineRequestError",
    "LoadSnapshot",
    "MetricsRecorder",
    "ModelCard",
    "OpenAICall",
    "Resume",
    "Sampling",
]


class EngineRequestError(ValueError):
    """A request the engine cannot serve (prompt too long, bad stop strings...)."""


@dataclass(slots=True)
class Resume:
    """What an earlier replica streamed to the client (see the module docstring)."""

    token_ids: list[int]
    text: str


@dataclass(slots=True)
class OpenAICall:
    request_id: str
    endpoint: str  # one of ENDPOINTS
    body: dict[str, Any]  # the client's JSON object (plus what the router set)
    resume: Resume | None = None


@dataclass(slots=True)
class Chunk:
    """Bytes for the client, and what the router needs to know about them."""

    data: bytes
    #: HTTP status on the first chunk (0 on later ones); non-2xx: data is the error JSON.
    status: int = 0
    #: Generated token ids behind this chunk and their text (n=1 streams).
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    #: False once a failure could not be resumed exactly (tool call, parser, n > 1).
    resumable: bool = True
    tool_call: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(slots=True)
class ModelCard:
    max_model_len: int
    root: str = ""
    parent: str = ""


def error_body(message: str, status: int = 400, etype: str = "BadRequestError", param: str | None = None) -> bytes:
    """OpenAI's error JSON, as vLLM's server writes it."""
    import json

    return json.dumps(
        {"error": {"message": message, "type": etype, "param": param, "code": status}}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def error_chunk(message: str, status: int = 400, etype: str = "BadRequestError", param: str | None = None) -> Chunk:
    return Chunk(data=error_body(message, status, etype, param), status=status, resumable=False)


# -- the sim engine's token-level request (its OpenAI layer builds it) ------


@dataclass(slots=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: disabled
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    sampling: Sampling
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # Tokens already produced by an earlier replica for this request (migration):
    # the engine continues after them and does not emit them again.
    resume_token_ids: list[int] = field(default_factory=list)
    # The text the client received for them (None: unknown).  Engines hold back
    # text that could begin a stop string, so it may be shorter than their
    # detokenization; the resuming engine sends the difference first.
    resume_text: str | None = None
    # The LoRA adapter to serve it with (a name the engine has loaded); None: the base model.
    lora: str | None = None


@dataclass(slots=True)
class Delta:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" on the last delta
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(slots=True)
class LoadSnapshot:
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1
    prefix_cache_queries: int  # cumulative tokens looked up
    prefix_cache_hits: int  # cumulative tokens found
    # LoRA: adapters in the active slots (usable by the next batch), adapters loaded (servable), and
    # adapters put into a slot so far (cumulative; each one a load).
    active_adapters: tuple[str, ...] = ()
    loaded_adapters: tuple[str, ...] = ()
    adapter_swaps: int = 0


class MetricsRecorder(Protocol):
    """Where an engine records its per-request figures (cluster.replica.metrics.ReplicaMetrics)."""

    def observe_ttft(self, seconds: float) -> None: ...
    def observe_itl(self, seconds: float) -> None: ...
    def observe_e2e(self, seconds: float) -> None: ...
    def add_prompt_tokens(self, n: int) -> None: ...
    def add_generation_tokens(self, n: int) -> None: ...


class Engine(abc.ABC):
    """One model replica's engine; see the module docstring for the contract."""

    #: Context length in tokens, for validation and ListModels.
    max_model_len: int
    #: KV-cache capacity in tokens, reported to routers (0: unknown).
    kv_capacity_tokens: int = 0
    #: Set by the replica (``attach_metrics``); None: record nothing.
    metrics: MetricsRecorder | None = None

    def attach_metrics(self, metrics: MetricsRecorder) -> None:
        """Record TTFT / ITL / E2E and token counts into ``metrics`` from now on."""
        self.metrics = metrics

    @property
    def model_card(self) -> ModelCard:
        return ModelCard(max_model_len=self.max_model_len)

    @abc.abstractmethod
    def serve(self, call: OpenAICall) -> AsyncIterator[Chunk]:
        """Answer one OpenAI request; closing the iterator aborts it."""

    async def load_adapter(self, name: str, path: str) -> None:
        """Make LoRA adapter ``name`` (a ``peft`` directory at ``path``) servable; EngineRequestError if it cannot be."""
        raise EngineRequestError("LoRA is off for this model (set models[].lora)")

    async def unload_adapter(self, name: str) -> bool:
        """Forget adapter ``name``; False when it was not loaded."""
        return False

    @abc.abstractmethod
    def load(self) -> LoadSnapshot:
        """Current load; must not block."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the engine's processes and memory."""
