"""The autoscale bench's fleet: sim replicas behind a least-loaded dispatcher, seen by the autoscaler through its own
interfaces (an :class:`Actuator` that starts and drains them, a :class:`MetricsSource` that reports their load),
on the trace's clock (``speed`` times faster than real time). See :mod:`loadtests.bench.autoscale`."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from cluster.autoscaler.actuators.base import Actuator
from cluster.autoscaler.sources.base import MetricsSource
from cluster.autoscaler.types import Observation
from cluster.engine.base import EngineRequest, Sampling
from cluster.engine.sim import SimEngine, SimParams

ENGINE = dict(prefill_base_ms=20.0, prefill_ms_per_token=0.2, decode_base_ms=20.0, decode_ms_per_seq=0.5, max_num_seqs=8)
PROMPT_WORDS = 120
OUTPUT_TOKENS = 32
TARGET_LOAD = 5.0  # waiting + running per replica the autoscaler (and oracle) aim at; 8 run at once at most
WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta")


@dataclass
class Rep:
    engine: SimEngine
    asked_at: float
    ready_at: float | None = None
    stopped_at: float | None = None
    draining: bool = False
    in_flight: int = 0


@dataclass
class Result:
    arrival: float
    ttft: float | None = None
    e2e: float | None = None
    ok: bool = False


@dataclass
class Fleet(Actuator, MetricsSource):
    """Sim replicas, a dispatcher, and both sides of the autoscaler's interfaces (actuator + metrics source)."""

    speed: float
    startup: float
    kind = "bench"
    reps: list[Rep] = field(default_factory=list)
    t0: float = 0.0
    desired: int = 0
    pending: int = 0
    recent_ttft: list[tuple[float, float]] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _ids: Any = field(default_factory=itertools.count)

    def now(self) -> float:
        """Trace seconds since the start."""
        return (time.monotonic() - self.t0) * self.speed

    def live(self) -> list[Rep]:
        return [r for r in self.reps if r.stopped_at is None and not r.draining]

    # -- actuator -------------------------------------------------------------------------------
    async def current(self) -> int:
        return self.desired

    async def scale(self, n: int, warm: bool = False) -> None:
        self.desired = n
        live = self.live()
        for _ in range(n - len(live)):
            rep = Rep(SimEngine(SimParams(time_scale=1 / self.speed, seed=next(self._ids), **ENGINE)), asked_at=self.now())
            self.reps.append(rep)
            if warm:
                rep.ready_at = rep.asked_at
                self._ready.set()
            else:
                self._spawn(self._start(rep))
        if n < len(live):
            # Starting replicas first (they serve nothing yet), then the least busy.
            victims = sorted(live, key=lambda r: (r.ready_at is not None, r.in_flight))[: len(live) - n]
            for r in victims:
                r.draining = True
                self._spawn(self._drain(r))

    async def _start(self, rep: Rep) -> None:
        await asyncio.sleep(self.startup / self.speed)
        if not rep.draining:
            rep.ready_at = self.now()
            self._ready.set()

    async def _drain(self, rep: Rep) -> None:
        while rep.in_flight:  # noqa: ASYNC110 - a count, polled at a fine grain
            await asyncio.sleep(0.01)
        await rep.engine.shutdown()
        rep.stopped_at = self.now()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- metrics source -------------------------------------------------------------------------
    async def observe(self, model: str) -> Observation:
        ready = [r for r in self.live() if r.ready_at is not None]
        load = sum(r.engine.load().running + r.engine.load().waiting for r in ready)
        running = sum(r.engine.load().running for r in ready)
        now = self.now()
        # What Prometheus' rate(llm_cluster_router_requests_total[10s]) would say.
        self.finished = [t for t in self.finished if now - t <= 10]
        completions = len(self.finished) / min(10.0, max(now, 1.0))
        self.recent_ttft = [(t, v) for t, v in self.recent_ttft if now - t <= 10]
        vals = sorted(v for _, v in self.recent_ttft)
        return Observation(
            at=now,
            known_replicas=len(ready),
            reporting_replicas=len(ready),
            load=float(load) + (self.pending if not ready else 0),
            kv_usage=None,
            token_throughput=None,
            ttft_s=vals[int(0.9 * (len(vals) - 1))] if vals else None,
            demand=float(self.pending) if not ready else 0.0,
            running=float(running),
            completion_rate=completions,
        )

    # -- dispatcher ---------------------------------------------------------------------------
    async def request(self, i: int, arrival: float, out: Result) -> None:
        self.pending += 1
        try:
            while True:
                ready = [r for r in self.reps if r.ready_at is not None and not r.draining and r.stopped_at is None]
                if ready:
                    break
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), 120 / self.speed)
                except TimeoutError:
                    return  # failed: no replica within 120 s
        finally:
            self.pending -= 1
        rep = min(ready, key=lambda r: r.in_flight)
        rep.in_flight += 1
        prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(PROMPT_WORDS))
        req = EngineRequest(request_id=f"q{i}", sampling=Sampling(max_tokens=OUTPUT_TOKENS), prompt=prompt)
        try:
            async for d in rep.engine.generate(req):
                if out.ttft is None and d.token_ids:
                    out.ttft = self.now() - arrival
                    self.recent_ttft.append((self.now(), out.ttft))
                if d.finish_reason is not None:
                    out.ok = d.finish_reason == "length"
                    out.e2e = self.now() - arrival
                    self.finished.append(self.now())
        finally:
            rep.in_flight -= 1

    def replica_seconds(self, end: float) -> float:
        return sum((r.stopped_at if r.stopped_at is not None else end) - r.asked_at for r in self.reps)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for r in self.reps:
            if r.stopped_at is None:
                await r.engine.shutdown()
