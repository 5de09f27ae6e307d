"""The engine interface every backend implements.

An engine owns one model replica's compute.  The replica server (cluster.replica)
drives it through four calls:

- ``generate(request)`` -> async iterator of :class:`Delta`, the last one carrying
  ``finish_reason`` and usage;
- ``abort(request_id)`` frees the request's slot at once (client cancel, deadline);
- ``load()`` -> :class:`LoadSnapshot`, cheap enough to call every 100 ms;
- ``shutdown()``.

Requests arrive validated by the router (see cluster.router.validation), so an
engine only rejects what it alone can know (e.g. a prompt longer than its
context), by raising :class:`EngineRequestError`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from cluster.common.chat import ChatMessage

__all__ = ["ChatMessage", "Delta", "Engine", "EngineRequest", "EngineRequestError", "LoadSnapshot", "MetricsRecorder", "Sampling"]


class EngineRequestError(ValueError):
    """A request the engine cannot serve (prompt too long, bad stop strings...)."""


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

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        """Stream deltas for ``request``; cancelling the iterator aborts it."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> bool:
        """Abort a running or queued request; False when it is unknown."""

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
