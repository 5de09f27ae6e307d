"""A small async load driver for the fault-injection suite.

Clients stream seeded requests through the router (gRPC and OpenAI HTTP/SSE)
while a test injects a fault.  Each request's outcome is recorded and judged
against what a sim engine produces for the same request when nothing fails:
with a sampling seed the sim's words depend only on the seed, so a migrated
stream must match the undisturbed one token for token.

A request is

- **completed**: it finished, and its token ids, text and usage equal the
  undisturbed run's;
- **refused**: it ended with a clear error (a gRPC status with a message, an
  HTTP error status, or an SSE error event) before its first token;
- **failed**: it ended with a clear error after its first token;
- **lost**: anything else: it ended within no deadline, ended without a finish
  reason or an error, or finished with text that differs from the undisturbed
  run (a gap, a repeat, a truncation).  Lost must be 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
import grpc

from cluster.client import build_request
from cluster.engine.base import EngineRequest, Sampling
from cluster.engine.sim import SimEngine, SimParams
from cluster.proto import inference_pb2_grpc

#: Slack on top of a request's deadline before it counts as hung (noisy 2-core machine).
DEADLINE_SLACK_S = 2.0


@dataclass
class Outcome:
    index: int
    api: str
    seed: int
    max_tokens: int
    deadline_s: float
    stop: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = -1
    error: str = ""  # "CODE: message" when it ended with an error
    elapsed_s: float = 0.0


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    migrated: int = 0
    refused: int = 0
    failed: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        """The scenario's counts as one line, also kept for the end-of-session summary."""
        text = (
            f"faults[{name}]: sent={self.sent} completed={self.completed} migrated={self.migrated} "
            f"refused={self.refused} failed={self.failed} lost={self.lost}"
        )
        REPORT.append(text)
        return text


#: Every tally line printed in this session; tests/faults/conftest.py shows them in pytest's summary.
REPORT: list[str] = []

#: Stop strings by request index: one that never matches (the engine still holds
#: back 3 characters, which a migration must not lose), one that often does, none.
STOPS: tuple[list[str], ...] = (["qqqq"], ["e t"], [])

_expected_cache: dict[tuple[int, int, tuple[str, ...]], tuple[list[int], str, str, int]] = {}


async def expected(seed: int, max_tokens: int, stop: list[str]) -> tuple[list[int], str, str, int]:
    """Token ids, text, finish reason and completion tokens of an undisturbed run.

    The sim's seeded words do not depend on the prompt, so any prompt will do.
    """
    key = (seed, max_tokens, tuple(stop))
    if key not in _expected_cache:
        engine = SimEngine(SimParams(time_scale=0.0))
        ids: list[int] = []
        text = ""
        req = EngineRequest(request_id="ref", sampling=Sampling(max_tokens=max_tokens, seed=seed, stop=stop), prompt="reference prompt")
        async for d in engine.generate(req):
            ids += d.token_ids
            text += d.text
            last = d
        await engine.shutdown()
        _expected_cache[key] = (ids, text, last.finish_reason or "", last.completion_tokens)
    return _expected_cache[key]


async def judge(outcomes: list[Outcome], migrated: int) -> Tally:
    t = Tally(sent=len(outcomes), migrated=migrated)
    for o in outcomes:
        hung = o.elapsed_s > o.deadline_s + DEADLINE_SLACK_S
        if o.error and not hung:
            if o.token_ids or o.text:
                t.failed += 1
            else:
                t.refused += 1
            t.errors.append(o.error)
            continue
        ids, text, finish, completion = await expected(o.seed, o.max_tokens, o.stop)
        ids_ok = o.api == "http" or o.token_ids == ids  # the HTTP API carries text only
        if not hung and o.finish_reason == finish and ids_ok and o.text == text and o.completion_tokens == completion:
            t.completed += 1
            continue
        t.lost += 1
        if len(t.lost_examples) < 5:
            t.lost_examples.append(
                f"#{o.index} {o.api}: hung={hung} finish={o.finish_reason!r} error={o.error!r} "
                f"tokens={len(o.token_ids)}/{o.max_tokens} text_ok={o.text == text} usage={o.completion_tokens}"
            )
    return t


async def _one_grpc(stub: inference_pb2_grpc.InferenceStub, o: Outcome) -> None:
    req = build_request(f"request {o.index} tell me a story", model="sim", chat=o.index % 2 == 0, max_tokens=o.max_tokens, seed=o.seed)
    req.sampling.temperature = 0.8
    req.sampling.stop.extend(o.stop)
    try:
        async for c in stub.Generate(req, timeout=o.deadline_s):
            o.token_ids += c.token_ids
            o.text += c.text
            if c.finish_reason:
                o.finish_reason = c.finish_reason
                o.completion_tokens = c.usage.completion_tokens
    except grpc.aio.AioRpcError as exc:
        o.error = f"{exc.code().name}: {exc.details()}"


async def _one_http(session: aiohttp.ClientSession, url: str, o: Outcome) -> None:
    body = {
        "model": "sim",
        "prompt": f"request {o.index} tell me a story",
        "max_tokens": o.max_tokens,
        "seed": o.seed,
        "temperature": 0.8,
        "stop": o.stop or None,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    try:
        # HTTP has no deadline header: the router's request_timeout_s is the deadline,
        # and the client waits a little longer so that a hang shows as one.
        timeout = aiohttp.ClientTimeout(total=o.deadline_s + DEADLINE_SLACK_S + 1)
        async with session.post(url, json=body, timeout=timeout) as resp:
            if resp.status != 200:
                o.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    o.error = f"SSE {event['error'].get('code')}: {event['error'].get('message')}"
                    continue
                if event.get("usage"):
                    o.completion_tokens = event["usage"]["completion_tokens"]
                for ch in event.get("choices", []):
                    o.text += ch.get("text", "")
                    if ch.get("finish_reason"):
                        o.finish_reason = ch["finish_reason"]
    except TimeoutError:
        o.error = ""  # a client-side timeout is no clear error from the server: counted by elapsed time


async def run_load(
    grpc_port: int,
    http_port: int,
    *,
    concurrency: int,
    requests: int,
    max_tokens: int = 40,
    deadline_s: float = 20.0,
    http_share: int = 4,
    seed0: int = 1000,
    progress: list[Outcome] | None = None,
) -> list[Outcome]:
    """``requests`` streams from ``concurrency`` closed-loop clients; every ``http_share``-th goes over HTTP."""
    outcomes: list[Outcome] = [] if progress is None else progress
    counter = iter(range(requests))
    url = f"http://127.0.0.1:{http_port}/v1/completions"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, aiohttp.ClientSession() as session:
        stub = inference_pb2_grpc.InferenceStub(channel)

        async def client() -> None:
            for i in counter:
                api = "http" if http_share and i % http_share == http_share - 1 else "grpc"
                o = Outcome(index=i, api=api, seed=seed0 + i, max_tokens=max_tokens, deadline_s=deadline_s, stop=STOPS[i % len(STOPS)])
                outcomes.append(o)
                t0 = time.monotonic()
                if api == "grpc":
                    await _one_grpc(stub, o)
                else:
                    await _one_http(session, url, o)
                o.elapsed_s = time.monotonic() - t0

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes
