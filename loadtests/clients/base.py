"""What every client records per request, and the client interface the runner drives.

Timing follows vLLM's ``vllm bench serve`` clients (vllm/benchmarks/lib/endpoint_request_func.py): the clock
starts just before the request is sent (``st``); TTFT is the time to the first chunk that carries output;
ITL are the gaps between consecutive output chunks; E2E latency is the time of the last chunk (the usage chunk
when the server sends one).  Output length is the server's ``usage.completion_tokens`` when reported,
otherwise the number of output chunks (exact when the server streams one token per chunk, as llm-cluster
does).  Times are ``time.perf_counter()`` offsets from the run's origin, in seconds.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any

from loadtests.workloads import RequestSpec

# Error kinds (result.json "errors" keys): "http_<status>", "grpc_<CODE>", "timeout", "connection",
# "stream_error" (an error event inside a 200 stream), "empty_response", "dropped_at_client", "client_error".
DROPPED = "dropped_at_client"


@dataclass(slots=True)
class RequestResult:
    index: int
    scheduled_s: float  # planned send offset
    start_s: float = 0.0  # actual send offset (st)
    ok: bool = False
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int | None = None
    error: str | None = None
    error_detail: str | None = None
    session_id: str | None = None

    @property
    def end_s(self) -> float | None:
        return None if self.e2e_s is None else self.start_s + self.e2e_s

    @property
    def tpot_s(self) -> float | None:
        """vLLM: (latency - ttft) / (output_len - 1), only for successful requests with more than one token."""
        if not self.ok or self.ttft_s is None or self.e2e_s is None or self.output_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def fail(self, kind: str, detail: str = "") -> None:
        self.ok = False
        self.error = kind
        self.error_detail = detail[:500] or None

    def to_record(self) -> dict[str, Any]:
        """One line of requests.jsonl."""
        r = lambda v: None if v is None else round(v, 6)  # noqa: E731
        return {
            "index": self.index,
            "scheduled_s": r(self.scheduled_s),
            "start_s": r(self.start_s),
            "ok": self.ok,
            "ttft_s": r(self.ttft_s),
            "tpot_s": r(self.tpot_s),
            "e2e_s": r(self.e2e_s),
            "itl_s": [round(x, 6) for x in self.itl_s],
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "error": self.error,
            "error_detail": self.error_detail,
            "session_id": self.session_id,
        }


class StreamTimer:
    """Turns chunk arrival times into TTFT / ITL / E2E exactly as vLLM's clients do."""

    __slots__ = ("chunks", "last", "result", "st")

    def __init__(self, result: RequestResult, origin: float) -> None:
        self.result = result
        self.st = time.perf_counter()
        result.start_s = self.st - origin
        self.last: float | None = None
        self.chunks = 0

    def output_chunk(self) -> None:
        now = time.perf_counter()
        if self.result.ttft_s is None:
            self.result.ttft_s = now - self.st
        elif self.last is not None:
            self.result.itl_s.append(now - self.last)
        self.last = now
        self.chunks += 1

    def other_chunk(self) -> None:
        """A chunk without output (usage, role-only): it moves the end time, not TTFT/ITL."""
        self.last = time.perf_counter()

    def finish(self, completion_tokens: int | None) -> None:
        r = self.result
        if r.ttft_s is None:
            r.fail("empty_response", "the stream ended without any output")
            return
        r.e2e_s = (self.last or time.perf_counter()) - self.st
        r.output_tokens = completion_tokens if completion_tokens else self.chunks
        r.ok = True


class Client(abc.ABC):
    """One API of one target.  ``origin`` is the run's perf_counter zero, set by the runner."""

    origin: float = 0.0

    async def open(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abc.abstractmethod
    async def models(self) -> list[str]:
        """Model names the target serves."""

    @abc.abstractmethod
    async def ready_replicas(self, model: str | None) -> int | None:
        """The cluster's ready replica count, or None when the target does not expose it."""

    @abc.abstractmethod
    async def send(self, spec: RequestSpec, model: str, result: RequestResult) -> None:
        """Send one streaming request and fill ``result`` (never raises for a failed request)."""
