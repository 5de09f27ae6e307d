"""What the simulated engine's tests share: step timings, prompts of known length, requests, and an engine to run them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from cluster.engine.base import Delta, EngineRequest, Sampling
from cluster.engine.sim import SimEngine, SimParams

# Steps of 1 ms real time: slow enough to observe state between steps, fast
# enough for hundreds of steps per test.
ONE_MS_STEPS: dict[str, Any] = {
    "prefill_base_ms": 0.0,
    "prefill_ms_per_token": 0.0,
    "decode_base_ms": 10.0,
    "decode_ms_per_seq": 0.0,
    "time_scale": 0.1,
}


def words(n: int, tag: str = "w") -> str:
    """``n`` distinct words of at most 4 characters: exactly one token each."""
    assert len(tag) + len(str(n - 1)) <= 4
    return " ".join(f"{tag}{i}" for i in range(n))


def request(rid: str, prompt: str = "hello there", max_tokens: int = 8, **sampling: Any) -> EngineRequest:
    resume = sampling.pop("resume", [])
    resume_text = sampling.pop("resume_text", None)
    return EngineRequest(
        request_id=rid,
        sampling=Sampling(max_tokens=max_tokens, **sampling),
        prompt=prompt,
        resume_token_ids=resume,
        resume_text=resume_text,
    )


async def collect(engine: SimEngine, req: EngineRequest) -> list[Delta]:
    return [d async for d in engine.generate(req)]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def ids_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


async def wait_until(cond: Callable[[], bool], limit_s: float = 2.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.0005)


@contextlib.asynccontextmanager
async def sim(**overrides: Any) -> AsyncIterator[SimEngine]:
    engine = SimEngine(SimParams(**overrides))
    try:
        yield engine
    finally:
        await engine.shutdown()
