import asyncio
from types import SimpleNamespace

import pytest

from cluster.config import RouterConfig
from cluster.proto import replica_pb2
from cluster.router.auth import ANONYMOUS
from cluster.router.gate import Gate, Refused
from cluster.router.metrics import RouterMetrics
from cluster.router.validation import relay_request

pytestmark = pytest.mark.asyncio


class HeldBalancer:
    """A balancer whose streams end only when released; one ready replica per model."""

    def __init__(self) -> None:
        self.replicas = SimpleNamespace(by_model={"a": ["ra"], "b": ["rb"]}, by_id={})
        self.metrics = RouterMetrics()
        self.in_flight = 0
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def relay(self, req, timeout_s, emit):
        self.started.append(req.model)
        await self.release.wait()
        await emit(replica_pb2.OpenAIChunk(data=b"{}", status=200, text="x", finish_reason="length", prompt_tokens=3, completion_tokens=1))


async def drain(gate: Gate, model: str) -> list:
    req = relay_request("completions", {"model": model, "prompt": "hi", "max_tokens": 1}, models=[model])
    chunks: list = []

    async def collect(c) -> None:
        chunks.append(c)

    await gate.relay(gate.anonymous, req, 10, collect)
    return chunks


async def test_a_flood_on_one_model_does_not_hold_back_another():
    bal = HeldBalancer()
    gate = Gate(RouterConfig.model_validate({"admission": {"max_concurrent_per_replica": 1, "max_queue": 4}}), bal)  # type: ignore[arg-type]
    first_a = asyncio.create_task(drain(gate, "a"))
    queued_a = asyncio.create_task(drain(gate, "a"))
    b = asyncio.create_task(drain(gate, "b"))
    await asyncio.sleep(0.05)
    assert bal.started == ["a", "b"]  # b got its own slot; the second a waits for a's
    assert gate.queue("a").depth() == 1 and gate.queue("b").depth() == 0
    bal.release.set()
    await asyncio.gather(first_a, queued_a, b)
    assert bal.started == ["a", "b", "a"]
    assert gate.leaks() == {}


async def test_a_refused_request_returns_its_tenant_allowance():
    bal = HeldBalancer()
    cfg = RouterConfig.model_validate(
        {"admission": {"max_concurrent_per_replica": 1, "max_queue": 0}, "auth": {"anonymous": {"requests_per_minute": 2}}}
    )
    gate = Gate(cfg, bal)  # type: ignore[arg-type]
    assert gate.anonymous.name == ANONYMOUS
    held = asyncio.create_task(drain(gate, "a"))
    await asyncio.sleep(0.02)
    with pytest.raises(Refused, match="queue full"):
        await drain(gate, "a")  # queue full: refunded, so the tenant's second request still counts as unused
    bal.release.set()
    await held
    await drain(gate, "a")  # the second of two per minute
    with pytest.raises(Refused, match="requests per minute"):
        await drain(gate, "a")
    assert gate.leaks() == {}
