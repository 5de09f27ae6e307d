"""One attempt: a request's stream from one replica, relayed to the client.

The balancer (cluster/router/balancer.py) decides where a request goes and
what happens when an attempt fails (retry, migrate, give up); this module is
the relay of one attempt.  Its chunks are handed to the front end one by one
(``emit``, a coroutine the front end passes down: plain calls, no generator
between the layers), except when the front end has handed the request a sink
(``RelayRequest.sink``: the client's socket for an HTTP SSE stream) and the
replica answers over its relay stream: then the stream is *pumped*
(``RelayCall.pump``): each chunk is counted and written to the client's socket
inside the relay connection's own callback, and the relaying task wakes only
when the stream ends, fails, stalls, or the client's buffer is full.  That
saves the per-token task switch and the hops through the generators above,
most of what the router spends per token.  A sink given before the stream
started (the fast HTTP front's, with the response's head still to write) is
pumped from the first chunk on: the pump writes the head with the first bytes
and calls back once (first-token time, the circuit breaker, the stall watch),
so an ordinary stream never wakes the task before it ends; a first chunk that
is not an ordinary SSE one (an error status, a JSON answer) is declined and
comes back here, to be emitted as without a sink.

Spec (both ways alike): every relayed chunk's token ids and text are kept for
a migration (``RelayState``), counted for the tenant's charge
(``RelayRequest.note``) and timed (TTFT, ITL); a 5xx before any byte reached
the client, a first-token timeout, a stall (no chunk for ``stall_timeout_s``)
or a retryable transport error raises :class:`Failed`, which the balancer
turns into a retry or a migration; the request's deadline ends it with
DEADLINE_EXCEEDED.

Failure modes: a client slower than the engine pauses the replica's socket
(TCP holds the replica back) and the task polls the client's buffer every few
milliseconds until it drains; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cluster.proto import replica_pb2
from cluster.router.circuit import CircuitBreaker
from cluster.router.errors import RouterError
from cluster.router.http_reply import SINK_HIGH
from cluster.router.metrics import RouterMetrics
from cluster.router.relay import DECLINED, EOF, PAUSED, RelayCall, RelayError
from cluster.router.replicas import ReplicaHandle
from cluster.router.stall import StallWatch
from cluster.router.validation import RelayRequest

monotonic = time.monotonic
#: A pumped stream's inter-token gaps are added to the ITL histogram every FOLD chunks (and at its end).
FOLD = 64
#: What the front end does with each chunk the attempt does not pump itself (write it, collect it).
Emit = Callable[[replica_pb2.OpenAIChunk], Awaitable[None]]
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED}


class Failed(Exception):
    """One attempt's replica failed (not the client's fault): retry, migrate or give up."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class RelayState:
    """What one request has relayed so far, over every replica it tried."""

    req: RelayRequest
    sent_ids: list[int] = field(default_factory=list)
    sent_text: list[str] = field(default_factory=list)
    #: Bytes reached the client (from then on a failure is migrated or fatal, never retried).
    sent: bool = False
    resumable: bool = True
    arrived: float = field(default_factory=time.monotonic)
    last: float | None = None


@dataclass
class Attempts:
    """Runs attempts with the balancer's limits, breaker and metrics."""

    breaker: CircuitBreaker
    metrics: RouterMetrics
    first_token_timeout_s: float
    stall_timeout_s: float

    async def run(
        self, replica: ReplicaHandle, rreq: replica_pb2.OpenAIRequest, left: float | None, relay: RelayState, model: str, emit: Emit
    ) -> None:
        """Relay one replica's stream; raises :class:`Failed` when the replica (not the request) failed.

        A replica that sends nothing (hung engine, stuck queue, a connect that hangs) is given up on after
        ``first_token_timeout_s``; other requests never wait on it, since each relays on its own task.  One
        watchdog (cluster/router/stall.py) times the first token, the stall limit (only the time spent waiting
        on the replica, never while the caller holds a chunk) and the request's deadline: one timer per attempt.
        """
        replica.begin()
        loop = asyncio.get_running_loop()
        first_s = self.first_token_timeout_s if left is None else min(left, self.first_token_timeout_s)
        call: Any = None
        watch: StallWatch | None = None
        try:
            with StallWatch(self.stall_timeout_s, first_s, None if left is None else loop.time() + left) as watch:
                pool = replica.relay  # the replica's relay stream when it has one (cluster/router/relay.py)
                call = await pool.call(rreq) if pool is not None else replica.stub.OpenAI(rreq, timeout=left)
                if relay.req.sink is not None and isinstance(call, RelayCall):
                    # The whole stream, from its first chunk on, in the connection's callback; the first
                    # chunk comes back here only when it is not an ordinary SSE one (an error, a JSON answer).
                    itl = self.metrics.itl.labels(model)
                    first = self._first_taken(replica, relay, model, itl, watch)
                    if await self._pump(call, relay, itl, watch, first) is not DECLINED:
                        self.metrics.e2e.labels(model).observe(monotonic() - relay.arrived)
                        return
                chunk = await call.read()  # call.read() per message, not an async iterator: one hop less
                if chunk is EOF:
                    return
                watch.started()
                if chunk.status < 500:
                    self.breaker.success(replica)  # an engine's 4xx is the request's fault, never the replica's
                await self._stream(replica, call, chunk, relay, model, watch, emit)
        except TimeoutError:
            why = watch.why if watch is not None else None
            if why is None:
                raise
            if why == "deadline":
                raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
            self.breaker.failure(replica)
            if why == "first_token":
                msg = f"{replica.replica_id}: no first token within {self.first_token_timeout_s:g}s"
                raise Failed("first_token_timeout", msg) from None
            raise Failed("stall", f"{replica.replica_id}: no token for {self.stall_timeout_s:g}s mid-stream") from None
        except (grpc.aio.AioRpcError, RelayError) as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RouterError(code, "deadline exceeded") from None
            if code not in _RETRYABLE:
                raise RouterError(grpc.StatusCode.UNAVAILABLE, f"replica failed: {code.name}: {exc.details()}") from None
            self.breaker.failure(replica)
            raise Failed(code.name.lower(), f"{replica.replica_id}: {code.name}: {exc.details()}") from None
        finally:
            replica.end()
            if call is not None and not call.done():
                call.cancel()

    async def _stream(
        self, replica: ReplicaHandle, call: Any, chunk: Any, relay: RelayState, model: str, watch: StallWatch, emit: Emit
    ) -> None:
        """From the first chunk on: emit each (or pump the rest once the front end gave a sink) until the end."""
        itl = self.metrics.itl.labels(model)  # once per attempt, not per chunk
        read, req = call.read, relay.req
        while True:
            if chunk.status >= 500 and not relay.sent:
                self.breaker.failure(replica)
                raise Failed(f"http_{chunk.status}", f"{replica.replica_id}: {chunk.data.decode(errors='replace')[:300]}")
            self._observe(relay, model, itl)
            if chunk.data or chunk.finish_reason:  # else a progress note of a non-streamed request
                self._keep(relay, chunk)
                await emit(chunk)
            if req.sink is not None and isinstance(call, RelayCall):
                await self._pump(call, relay, itl, watch)
                break
            watch.waiting()
            chunk = await read()
            if chunk is EOF:
                break
            watch.got()
        self.metrics.e2e.labels(model).observe(monotonic() - relay.arrived)

    def _first_taken(self, replica: ReplicaHandle, relay: RelayState, model: str, itl: Any, watch: StallWatch) -> Any:
        """What the pump calls when it takes the stream's first chunk (an ordinary SSE one: no error status)."""

        def first() -> None:
            watch.started()
            watch.waiting()  # on the replica for the next chunk: the stall limit counts from here
            self.breaker.success(replica)
            self._observe(relay, model, itl)

        return first

    async def _pump(self, call: RelayCall, relay: RelayState, itl: Any, watch: StallWatch, first: Any = None) -> object:
        """The stream (the rest of it; all of it given ``first``), written to the client's socket in the relay
        connection's callback; returns ``EOF``, or ``DECLINED`` (with ``first``) when the first chunk is Python's.

        A :class:`cluster.router.pump.Pump` takes each chunk there: it does what ``_observe`` and ``_keep``
        do (the inter-token gaps counted and folded into the histogram every :data:`FOLD`), on the request's
        own lists, and writes the response's head with the first bytes if the front end left it to it
        (``SseSink.head``); what it counted is folded into the request's state when the pump ends, however
        it ends.
        """
        sink, req = relay.req.sink, relay.req
        assert first is not None or relay.last is not None  # else the first chunk was observed
        pump = call.pump_type(sink.transport, sink.chunked, relay.sent_ids, relay.sent_text, itl.bounds, itl.add,
                              FOLD, relay.last or 0.0, SINK_HIGH, sink.head, first, sink.ends)  # fmt: skip
        watch.follow(pump)  # the stall watch counts from the pump's latest chunk on
        if first is None:
            watch.waiting()
        try:
            while (outcome := await call.pump(pump)) is PAUSED:
                watch.got()  # the client is slow, not the replica
                await sink.drained()
                watch.waiting()
            return outcome
        finally:
            pump.flush()
            watch.follow(None)
            if pump.sent:  # its latest chunk's time is the stream's
                relay.last = watch.last = pump.last
            if pump.head_sent:
                sink.head = None
            if pump.ended:
                sink.ended = True
            relay.sent = relay.sent or pump.sent
            relay.resumable = relay.resumable and pump.resumable
            req.tokens_sent += pump.tokens
            if req.tokens_used is None:
                req.tokens_used = pump.used

    @staticmethod
    def _keep(relay: RelayState, chunk: replica_pb2.OpenAIChunk) -> None:
        """What a migration and the tenant's charge need of a chunk that goes to the client."""
        relay.sent_ids.extend(chunk.token_ids)
        relay.sent_text.append(chunk.text)
        if not chunk.resumable:
            relay.resumable = False
        relay.sent = True
        relay.req.note(chunk)

    def _observe(self, relay: RelayState, model: str, itl: Any) -> None:
        """Client-side latencies on the router's clock: TTFT at the first chunk, then the gaps of a stream."""
        now = monotonic()
        if relay.last is None:
            self.metrics.ttft.labels(model).observe(now - relay.arrived)
        elif relay.req.stream:
            itl.observe(now - relay.last)
        relay.last = now
