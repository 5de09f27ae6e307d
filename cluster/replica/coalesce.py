"""Opportunistic coalescing of one stream's chunks before they go on the wire.

Spec: :func:`coalesced` relays a stream of ``OpenAIChunk`` s.  A pump task
reads the source as fast as it yields; the RPC's writer takes everything that
arrived while its previous write was under way and sends it as one message.
A chunk that finds the writer idle goes at once, alone: the first token is
never delayed and no token waits for company.  Merged, the SSE bytes are
concatenated and the typed fields combined so the router's view is exact:
token ids and text concatenated (what a resume needs), ``resumable`` only if
every part is, ``tool_call`` if any is, the finish reason and usage of the
finishing part, the status of the first.  Only SSE chunks merge (``data``
that is SSE events); a whole JSON body, an error chunk (status >= 300) and a
gRPC client's serialized ``GenerateChunk`` (one message each, by contract)
travel alone.

Why: each message costs the router a gRPC read (its completion-queue thread,
a wake-up of the event loop, a parse) and an HTTP write; when the engine is
ahead of the wire (a burst of tokens, a busy replica, a slow link) one
message per batch instead of per token is where that cost goes down.

Cost: one task per stream, one list append and a future wake-up per chunk
at the replica; nothing when the writer keeps up (each chunk goes alone).

Failure modes: an error in the source is raised to the RPC after the chunks
that came before it; cancelling the RPC (client cancel, deadline) cancels the
pump, whose source closes (the engine aborts the request) before the RPC
ends; cancelling the pump (``Abort``) ends the RPC as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cluster.proto import replica_pb2

OpenAIChunk = replica_pb2.OpenAIChunk


def _mergeable(c: replica_pb2.OpenAIChunk) -> bool:
    return c.status < 300 and c.data.startswith(b"data:")


def merge(parts: list[replica_pb2.OpenAIChunk]) -> replica_pb2.OpenAIChunk:
    """One chunk standing for ``parts`` (consecutive SSE chunks of one stream), exact for the router's fields."""
    first, last = parts[0], parts[-1]
    ids: list[int] = []
    for p in parts:
        ids.extend(p.token_ids)
    done = next((p for p in reversed(parts) if p.finish_reason), last)
    return OpenAIChunk(
        data=b"".join([p.data for p in parts]),
        status=first.status,
        token_ids=ids,
        text="".join([p.text for p in parts]),
        resumable=all(p.resumable for p in parts),
        tool_call=any(p.tool_call for p in parts),
        finish_reason=done.finish_reason,
        prompt_tokens=done.prompt_tokens,
        completion_tokens=done.completion_tokens,
        cached_prompt_tokens=done.cached_prompt_tokens,
    )


def batches(ready: list[replica_pb2.OpenAIChunk]) -> list[replica_pb2.OpenAIChunk]:
    """``ready`` as messages: runs of SSE chunks merged, every other chunk alone, order kept."""
    if len(ready) == 1:
        return ready
    out: list[replica_pb2.OpenAIChunk] = []
    run: list[replica_pb2.OpenAIChunk] = []
    for c in ready:
        if _mergeable(c):
            run.append(c)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else merge(run))
            run = []
        out.append(c)
    if run:
        out.append(run[0] if len(run) == 1 else merge(run))
    return out


class _Pump:
    """Reads the source on its own task into ``ready``; wakes the writer when it waits."""

    __slots__ = ("done", "error", "ready", "waiter")

    def __init__(self) -> None:
        self.ready: list[replica_pb2.OpenAIChunk] = []
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.done = False

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def run(self, source: AsyncIterator[replica_pb2.OpenAIChunk]) -> None:
        try:
            async with contextlib.aclosing(source) as s:  # type: ignore[type-var]
                async for c in s:
                    self.ready.append(c)
                    if self.waiter is not None:
                        self._wake()
        except BaseException as exc:  # handed to the writer, which raises it after what came before
            self.error = exc
        finally:
            self.done = True
            self._wake()


async def coalesced(source: AsyncIterator[replica_pb2.OpenAIChunk]) -> AsyncIterator[replica_pb2.OpenAIChunk]:
    """``source``'s chunks; those that arrive while the previous message is written go as one (see module doc)."""
    loop = asyncio.get_running_loop()
    pump = _Pump()
    task = loop.create_task(pump.run(source))
    try:
        while True:
            ready = pump.ready
            if ready:
                pump.ready = []
                for c in batches(ready):
                    yield c
                continue
            if pump.done:
                break
            pump.waiter = loop.create_future()
            await pump.waiter
            pump.waiter = None
        if pump.error is not None:
            raise pump.error
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
