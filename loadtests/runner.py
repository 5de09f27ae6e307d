"""The run loop: send requests on schedule (open loop) or with N workers (closed loop), and time them.

Open loop (``--rate``/``--profile``/``--trace``): the whole schedule is computed before the first request,
then each request is sent at its time whether or not earlier ones have finished.  ``--max-inflight`` caps how
many may be outstanding: an arrival that finds the cap full is **dropped** and counted as the error
``dropped_at_client``, never queued.  Queueing would hide overload twice over: the queued request's wait
would either be left out of its TTFT (flattering the server) or turn the run into a closed loop (the offered
rate silently falls to what the server sustains).  A drop keeps the offered load honest and shows up in
the error counts and the goodput.

Closed loop (``--concurrency N``): N workers each send a request, wait for its answer, and send the next.
Useful for "how fast can it go at N users", not for latency-under-load questions.

Samplers record in-flight requests (every ``sample_interval_s``) and the cluster's ready replica count
(``GET /healthz`` or gRPC ``ListModels``, every ``health_interval_s``) for the timeline plots.  Ctrl-C stops
sending, cancels what is in flight (error ``cancelled``), and still reports what was measured; a second
Ctrl-C kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from loadtests.arrivals import ArrivalProcess
from loadtests.clients.base import DROPPED, Client, RequestResult
from loadtests.workloads import RequestSpec, Workload

Schedule = list[tuple[float, RequestSpec]]


def build_schedule(
    workload: Workload,
    arrivals: ArrivalProcess,
    *,
    seed: int,
    duration_s: float | None,
    num_requests: int | None,
) -> Schedule:
    """Pair the arrival times with the workload's requests (a finite workload may end the schedule early)."""
    times = arrivals.times(seed, duration=duration_s, num_requests=num_requests)
    return list(zip(times, workload.requests(), strict=False))


def cut_schedule(rows: Schedule, *, duration_s: float | None, num_requests: int | None, speed: float = 1.0) -> Schedule:
    """A replayed trace, sped up by ``speed`` and cut at the duration / request count."""
    out = [(t / speed, s) for t, s in rows]
    if duration_s is not None:
        out = [(t, s) for t, s in out if t < duration_s]
    return out[:num_requests] if num_requests is not None else out


@dataclass(slots=True)
class RunOptions:
    model: str | None = None
    max_inflight: int = 512
    request_timeout_s: float = 300.0
    concurrency: int | None = None  # closed loop when set
    duration_s: float | None = None  # closed loop only (open-loop schedules are already cut)
    num_requests: int | None = None  # closed loop only
    sample_interval_s: float = 0.5
    health_interval_s: float = 1.0
    progress: bool = True
    keep_specs: bool = False  # keep the sent specs (closed loop --record-trace)


@dataclass(slots=True)
class RunOutcome:
    model: str
    results: list[RequestResult]
    duration_s: float
    started_at: float  # epoch seconds
    inflight: list[tuple[float, int]] = field(default_factory=list)
    replicas: list[tuple[float, int | None]] = field(default_factory=list)
    interrupted: bool = False
    sent_specs: dict[int, RequestSpec] = field(default_factory=dict)


class Runner:
    def __init__(self, client: Client, opts: RunOptions) -> None:
        self.client = client
        self.opts = opts
        self.results: list[RequestResult] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._errors = 0
        self._origin = 0.0
        self._model = ""
        self._pbar: tqdm | None = None
        self._interrupted = False
        self._specs: dict[int, RequestSpec] = {}
        self._inflight_samples: list[tuple[float, int]] = []
        self._replica_samples: list[tuple[float, int | None]] = []

    async def resolve_model(self) -> str:
        if self.opts.model:
            return self.opts.model
        models = await self.client.models()
        if not models:
            raise RuntimeError("the target lists no model; pass --model")
        return models[0]

    async def run(self, schedule: Schedule | None = None, requests: Iterator[RequestSpec] | None = None) -> RunOutcome:
        """Open loop over ``schedule``, or closed loop (``opts.concurrency``) over ``requests``."""
        await self.client.open()
        try:
            self._model = await self.resolve_model()
            total = len(schedule) if schedule is not None else self.opts.num_requests
            self._pbar = tqdm(total=total, unit="req", disable=not self.opts.progress, file=sys.stderr, dynamic_ncols=True)
            started_at = time.time()
            self._origin = self.client.origin = time.perf_counter()
            samplers = [asyncio.create_task(self._sample_inflight()), asyncio.create_task(self._sample_replicas())]
            if schedule is not None:
                driver = asyncio.create_task(self._open_loop(schedule))
            else:
                driver = asyncio.create_task(self._closed_loop(requests or iter(())))
            with _on_sigint(lambda: self._interrupt(driver)):
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
                if self._interrupted:
                    for t in list(self._tasks):
                        t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            # vLLM's benchmark duration: from the start until every request has finished.
            duration = time.perf_counter() - self._origin
            self._inflight_samples.append((duration, self._inflight))
            for s in samplers:
                s.cancel()
            await asyncio.gather(*samplers, return_exceptions=True)
            self._pbar.close()
        finally:
            await self.client.close()
        self.results.sort(key=lambda r: r.index)
        return RunOutcome(
            model=self._model,
            results=self.results,
            duration_s=duration,
            started_at=started_at,
            inflight=self._inflight_samples,
            replicas=self._replica_samples,
            interrupted=self._interrupted,
            sent_specs=self._specs,
        )

    def _interrupt(self, driver: asyncio.Task[None]) -> None:
        self._interrupted = True
        driver.cancel()
        # A second Ctrl-C gets Python's default handler (KeyboardInterrupt) back.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    async def _open_loop(self, schedule: Schedule) -> None:
        for i, (t, spec) in enumerate(schedule):
            delay = self._origin + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            result = RequestResult(index=i, scheduled_s=t)
            if self._inflight >= self.opts.max_inflight:
                result.start_s = time.perf_counter() - self._origin
                result.session_id = spec.session_id
                result.fail(DROPPED, f"{self._inflight} requests in flight (--max-inflight {self.opts.max_inflight})")
                self._record(result)
                continue
            self._inflight += 1
            task = asyncio.create_task(self._one(spec, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _closed_loop(self, requests: Iterator[RequestSpec]) -> None:
        counter = itertools.count()
        deadline = self._origin + self.opts.duration_s if self.opts.duration_s is not None else float("inf")

        async def worker() -> None:
            while time.perf_counter() < deadline:
                i = next(counter)
                if self.opts.num_requests is not None and i >= self.opts.num_requests:
                    return
                spec = next(requests, None)
                if spec is None:
                    return
                self._inflight += 1
                await self._one(spec, RequestResult(index=i, scheduled_s=time.perf_counter() - self._origin))

        workers = [asyncio.create_task(worker()) for _ in range(self.opts.concurrency or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _one(self, spec: RequestSpec, result: RequestResult) -> None:
        if self.opts.keep_specs:
            self._specs[result.index] = spec
        try:
            async with asyncio.timeout(self.opts.request_timeout_s):
                await self.client.send(spec, self._model, result)
        except TimeoutError:
            result.fail("timeout", f"no complete answer within {self.opts.request_timeout_s:g}s")
        except asyncio.CancelledError:
            result.fail("cancelled", "the run was interrupted")
        except Exception as exc:  # a client bug must cost one request, not the run
            result.fail("client_error", f"{type(exc).__name__}: {exc}")
        finally:
            self._inflight -= 1
            self._record(result)

    def _record(self, result: RequestResult) -> None:
        self.results.append(result)
        self._errors += not result.ok
        if self._pbar is not None:
            self._pbar.update(1)

    async def _sample_inflight(self) -> None:
        while True:
            now = time.perf_counter() - self._origin
            self._inflight_samples.append((now, self._inflight))
            if self._pbar is not None and not self._pbar.disable:
                self._pbar.set_postfix(inflight=self._inflight, errors=self._errors, refresh=False)
            await asyncio.sleep(self.opts.sample_interval_s)

    async def _sample_replicas(self) -> None:
        while True:
            t = time.perf_counter() - self._origin
            n = await self.client.ready_replicas(self._model)
            self._replica_samples.append((t, n))
            await asyncio.sleep(self.opts.health_interval_s)


@contextlib.contextmanager
def _on_sigint(callback: object) -> Iterator[None]:
    """Ctrl-C calls ``callback`` (stop sending, then report) instead of killing the run."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, callback)  # type: ignore[arg-type]
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        installed = False
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
