"""The vLLM backend: an :class:`~cluster.engine.base.Engine` over vLLM v1's ``AsyncLLM``.

Why it looks the way it does:

- ``AsyncLLM`` runs the scheduler and model in child processes and streams
  ``RequestOutput`` objects back over ZMQ; this class only translates between the
  cluster's request/delta types and vLLM's, so the replica server never touches
  vLLM types.
- Prompts are tokenized here (chat template included) rather than inside vLLM, so
  the engine knows the exact prompt length before submitting: over-long prompts
  are rejected with :class:`EngineRequestError`, and migrated requests can be
  resumed by appending ``resume_token_ids`` to the prompt tokens.
- ``load()`` is polled every ~100 ms and must not block or await the engine
  process.  vLLM publishes ``SchedulerStats`` (running/waiting counts, KV usage,
  prefix-cache counters) with every engine step to its stat loggers; a small
  custom logger keeps the latest values in memory, and ``load()`` just reads them,
  bounded by this class's own count of in-flight requests (which is always
  current, whereas the scheduler's numbers are one step old).

vLLM on CPU spawns processes, so any script creating an engine must do so under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.inputs import TokensPrompt
from vllm.outputs import RequestOutput
from vllm.renderers.inputs.preprocess import parse_model_prompt
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats

from cluster.engine.base import Delta, Engine, EngineRequest, EngineRequestError, LoadSnapshot, MetricsRecorder

logger = logging.getLogger(__name__)

GiB = 1 << 30

#: KV cache reserved on CPU when neither ``engine_args`` nor the
#: ``VLLM_CPU_KVCACHE_SPACE`` environment variable sizes it.  vLLM's own CPU
#: default asks for 90 % of the machine's RAM (``gpu_memory_utilization``) and
#: refuses to start when other processes hold more than 10 %; 1 GiB still holds
#: ~45k tokens of SmolLM2-135M context.
CPU_DEFAULT_KV_CACHE_BYTES = 1 * GiB

# vLLM finish reasons -> the cluster's.  "repetition" (vLLM's hallucination
# guard) ends the answer the way a stop would.  "error" is handled separately.
_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerView:
    """What vLLM's scheduler last reported, summed over its engine cores."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0  # cumulative tokens looked up
    prefix_cache_hits: int = 0  # cumulative tokens found
    updated_at: float = 0.0  # time.monotonic() of the last report; 0: none yet


class _StatsSink:
    """Latest scheduler stats per engine core, written by vLLM's output handler.

    ``record`` runs on the event loop thread (AsyncLLM's output handler) while
    ``view`` may be called from any thread, hence the lock; both are O(#engines).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[int, SchedulerStats] = {}
        # SchedulerStats.prefix_cache_stats holds only what happened since the
        # previous report (the scheduler resets it), so totals are kept here.
        self._queries = 0
        self._hits = 0
        self._updated_at = 0.0
        #: The replica's metrics (cluster.replica.metrics); None until attached.
        self.metrics: MetricsRecorder | None = None

    def record_iteration(self, it: IterationStats) -> None:
        """Export vLLM's own per-iteration figures, as vLLM's Prometheus logger does."""
        m = self.metrics
        if m is None:
            return
        m.add_prompt_tokens(it.num_prompt_tokens)
        m.add_generation_tokens(it.num_generation_tokens)
        for t in it.time_to_first_tokens_iter:
            m.observe_ttft(t)
        for t in it.inter_token_latencies_iter:
            m.observe_itl(t)
        for f in it.finished_requests:
            m.observe_e2e(f.e2e_latency)

    def record(self, engine_idx: int, stats: SchedulerStats) -> None:
        with self._lock:
            self._latest[engine_idx] = stats
            prefix = stats.prefix_cache_stats
            if prefix is not None:
                self._queries += prefix.queries
                self._hits += prefix.hits
            self._updated_at = time.monotonic()

    def view(self) -> SchedulerView:
        with self._lock:
            latest = list(self._latest.values())
            return SchedulerView(
                running=sum(s.num_running_reqs for s in latest),
                waiting=sum(s.num_waiting_reqs + s.num_skipped_waiting_reqs for s in latest),
                kv_cache_usage=max((s.kv_cache_usage for s in latest), default=0.0),
                prefix_cache_queries=self._queries,
                prefix_cache_hits=self._hits,
                updated_at=self._updated_at,
            )


class _SchedulerStatsRecorder(StatLoggerBase):
    """Per-engine-core vLLM stat logger that forwards SchedulerStats to a sink.

    Passed to ``AsyncLLM.from_engine_args(stat_loggers=...)`` as a factory
    (``functools.partial`` binding the sink); vLLM calls it with
    ``(vllm_config, engine_index)``.
    """

    def __init__(self, vllm_config: Any, engine_index: int = 0, *, sink: _StatsSink) -> None:
        self._sink = sink
        self._engine_index = engine_index

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self._sink.record(engine_idx, scheduler_stats)
        if iteration_stats is not None:
            self._sink.record_iteration(iteration_stats)

    def log_engine_initialized(self) -> None:
        pass


def _build_engine_args(
    model: str,
    served_name: str,
    engine_args: dict[str, Any] | None,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    executor_backend: str | None,
    on_cpu: bool,
) -> AsyncEngineArgs:
    """Merge the cluster's defaults with caller overrides into AsyncEngineArgs."""
    overrides = dict(engine_args or {})
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    for key in overrides:
        if key not in known:
            raise ValueError(f"unknown vLLM engine arg {key!r}")

    kwargs: dict[str, Any] = {
        "model": model,
        "served_model_name": [served_name],
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        # vLLM's periodic "throughput" log lines; our stat logger still gets
        # every SchedulerStats because custom loggers switch stats back on.
        "disable_log_stats": True,
    }
    if executor_backend not in (None, "auto"):
        # "auto" (the cluster config's default) is vLLM's own choice: leave unset.
        kwargs["distributed_executor_backend"] = executor_backend
    if on_cpu:
        # torch.compile on CPU costs about a minute of start-up (the project
        # measured 99 s compiled vs 36 s eager on a 2-core box) for little
        # decode speed on small models.
        kwargs["enforce_eager"] = True
        sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & overrides.keys()
        if not sized and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = CPU_DEFAULT_KV_CACHE_BYTES
    kwargs.update(overrides)
    return AsyncEngineArgs(**kwargs)


class VllmEngine(Engine):
    """One model replica served by vLLM's ``AsyncLLM``; build it with :meth:`create`."""

    def __init__(self, llm: AsyncLLM, *, served_name: str, sink: _StatsSink) -> None:
        self._llm = llm
        self._sink = sink
        self.served_name = served_name
        # Read after start-up: vLLM may lower max_model_len to fit the KV cache.
        self.max_model_len = int(llm.model_config.max_model_len)
        self._tokenizer = llm.get_tokenizer()
        # request_id -> monotonic submit time; the authoritative in-flight set.
        self._inflight: dict[str, float] = {}
        self._closed = False

    @classmethod
    async def create(
        cls,
        model: str,
        *,
        served_name: str,
        engine_args: dict[str, Any] | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        executor_backend: str | None = None,
    ) -> VllmEngine:
        """Start vLLM for ``model`` (a local directory or hub id) and wait until ready.

        ``engine_args`` are passed to ``AsyncEngineArgs`` and override the
        defaults (on CPU: ``enforce_eager=True`` and a 1 GiB KV cache unless
        ``VLLM_CPU_KVCACHE_SPACE`` is set); an unknown key raises ``ValueError``.
        """
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        args = _build_engine_args(
            model,
            served_name,
            engine_args,
            tensor_parallel_size,
            pipeline_parallel_size,
            executor_backend,
            on_cpu,
        )
        sink = _StatsSink()
        started = time.monotonic()
        logger.info("starting vLLM engine for %s", served_name, extra={"model": model, "served_name": served_name})
        # Construction blocks for tens of seconds (spawning and loading the
        # engine processes); a worker thread keeps the caller's event loop (a
        # replica's gRPC server, Ray's actor loop) responsive meanwhile.  AsyncLLM
        # supports this: it binds its asyncio tasks lazily to the loop that first
        # uses it.
        llm = await asyncio.to_thread(
            AsyncLLM.from_engine_args,
            args,
            stat_loggers=[functools.partial(_SchedulerStatsRecorder, sink=sink)],
        )
        # Start the output handler on this loop now rather than at the first
        # request, so an engine failure before any request is not missed.
        llm._run_output_handler()
        engine = cls(llm, served_name=served_name, sink=sink)
        seconds = time.monotonic() - started
        logger.info(
            "vLLM engine %s ready in %.1f s (max_model_len=%d)",
            served_name,
            seconds,
            engine.max_model_len,
            extra={"served_name": served_name, "seconds": round(seconds, 1), "max_model_len": engine.max_model_len},
        )
        return engine

    def attach_metrics(self, metrics: MetricsRecorder) -> None:
        self.metrics = metrics
        self._sink.metrics = metrics

    # -- requests ---------------------------------------------------------

    def _prompt_token_ids(self, request: EngineRequest) -> list[int]:
        """Tokenize the request's prompt; chat messages go through the chat template."""
        tokenizer = self._tokenizer
        if request.messages is not None:
            if not request.messages:
                raise EngineRequestError("messages must not be empty")
            from jinja2 import TemplateError

            try:
                text = tokenizer.apply_chat_template(
                    [{"role": m.role, "content": m.content} for m in request.messages],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            except TemplateError as error:
                # Templates reject what the model cannot take (roles out of
                # order, unsupported roles) by raising: a bad request.
                raise EngineRequestError(f"chat template rejected the messages: {error}") from error
            if not isinstance(text, str):
                raise EngineRequestError("the chat template did not render to text")
            # The template already carries the special tokens it wants.
            return list(tokenizer.encode(text, add_special_tokens=False))
        if request.prompt is None:
            raise EngineRequestError("request has neither prompt nor messages")
        return list(tokenizer.encode(request.prompt, add_special_tokens=True))

    def _sampling_params(self, request: EngineRequest, max_tokens: int) -> SamplingParams:
        sampling = request.sampling
        return SamplingParams(
            n=1,
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0 if sampling.top_k < 0 else sampling.top_k,  # vLLM: 0 disables
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        """Stream the request's deltas; the last one has finish_reason and usage.

        With ``resume_token_ids`` the model continues after those tokens (they
        are appended to the prompt and not emitted again); the last delta's
        ``completion_tokens`` then counts them too, so usage describes the whole
        logical request, and ``prompt_tokens`` counts only the original prompt.
        """
        if self._closed:
            raise RuntimeError("engine is shut down")
        request_id = request.request_id
        if request_id in self._inflight:
            raise EngineRequestError(f"request id {request_id!r} is already in flight")
        # Registered before the first await, so a concurrent duplicate is caught
        # and load() counts the request (as waiting) while it is tokenized.
        self._inflight[request_id] = time.monotonic()
        stream: AsyncGenerator[RequestOutput, None] | None = None
        finished = False
        try:
            prompt_ids = await asyncio.to_thread(self._prompt_token_ids, request)
            resume_ids = list(request.resume_token_ids)
            context_ids = prompt_ids + resume_ids
            if not prompt_ids:
                raise EngineRequestError("prompt is empty")
            # vLLM needs room for at least one generated token.
            if len(context_ids) >= self.max_model_len:
                raise EngineRequestError(
                    f"prompt is {len(prompt_ids)} tokens"
                    + (f" (+{len(resume_ids)} resumed)" if resume_ids else "")
                    + f", which leaves no room in the model's context of {self.max_model_len} tokens"
                )

            # Text of the resumed tokens the client has not received yet (held
            # back by the earlier engine for a stop string): it goes first.
            pending = self._unsent_resumed_text(prompt_ids, resume_ids, request.resume_text)
            remaining = request.sampling.max_tokens - len(resume_ids)
            if remaining <= 0:
                # An earlier replica already produced every token asked for.
                finished = True
                self._inflight.pop(request_id, None)
                yield Delta(
                    text=pending,
                    token_ids=[],
                    finish_reason="length",
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(resume_ids),
                )
                return
            # Past the context end vLLM would stop anyway; clamping makes it "length".
            max_tokens = min(remaining, self.max_model_len - len(context_ids))
            try:
                params = self._sampling_params(request, max_tokens)
            except (ValueError, TypeError, VLLMValidationError) as error:
                raise EngineRequestError(str(error)) from error

            renderer = self._llm.renderer
            parsed = parse_model_prompt(self._llm.model_config, TokensPrompt(prompt_token_ids=context_ids))
            (engine_input,) = await renderer.render_cmpl_async([parsed], renderer.default_cmpl_tok_params)

            stream = self._llm.generate(engine_input, params, request_id)
            generated = 0
            last: Delta | None = None
            async for output in stream:
                delta = self._to_delta(output, len(prompt_ids), len(resume_ids), generated)
                if delta is None:
                    continue
                generated += len(delta.token_ids)
                if pending:
                    delta.text, pending = pending + delta.text, ""
                if delta.finish_reason is not None:
                    # Held back until vLLM's stream has ended by itself (right
                    # after its finished output), so it is never left open.
                    last = delta
                    continue
                yield delta
            if last is None:
                raise RuntimeError(f"vLLM ended request {request_id} without a final output")
            finished = True
            self._inflight.pop(request_id, None)
            yield last
        except VLLMValidationError as error:
            raise EngineRequestError(str(error)) from error
        finally:
            self._inflight.pop(request_id, None)
            if stream is not None and not finished and not self._closed:
                # Our consumer went away (aclose -> GeneratorExit, or task
                # cancellation) or the stream failed: close vLLM's stream, whose
                # own handler aborts the request, then abort by id as well in
                # case the stream had not got far enough to know its request
                # (a no-op otherwise).
                try:
                    await stream.aclose()
                    await self._llm.abort(request_id)
                except Exception:
                    logger.exception("aborting request %s failed", request_id, extra={"request_id": request_id})

    def _unsent_resumed_text(self, prompt_ids: list[int], resume_ids: list[int], sent: str | None) -> str:
        """The detokenized resumed tokens past what the client received (``sent``).

        They are decoded after a few prompt tokens, so the first one gets the
        spacing it had when it was generated.  A stop string that began in this
        held-back text and ends in new text is not caught: vLLM matches stop
        strings in its own output only.
        """
        if not resume_ids or sent is None:
            return ""
        tail = prompt_ids[-8:]
        base = self._tokenizer.decode(tail, skip_special_tokens=True)
        full = self._tokenizer.decode(tail + resume_ids, skip_special_tokens=True)
        full = full[len(base) :] if full.startswith(base) else self._tokenizer.decode(resume_ids, skip_special_tokens=True)
        if not full.startswith(sent):
            logger.warning("resume_text does not match the resumed tokens; sending nothing extra")
            return ""
        return full[len(sent) :]

    def _to_delta(
        self,
        output: RequestOutput,
        prompt_tokens: int,
        resumed_tokens: int,
        generated_before: int,
    ) -> Delta | None:
        """One vLLM DELTA output -> one Delta; None when it carries nothing."""
        completion = output.outputs[0] if output.outputs else None
        text = completion.text if completion is not None else ""
        token_ids = list(completion.token_ids) if completion is not None else []
        reason = completion.finish_reason if completion is not None else None
        if reason is None and output.finished:
            reason = "abort"  # finished without a reason: only aborts do that
        if reason is None:
            if not text and not token_ids:
                return None
            return Delta(text=text, token_ids=token_ids)
        if reason == "error":
            raise RuntimeError(f"vLLM failed request {output.request_id} with an internal error")
        mapped = _FINISH_REASONS.get(str(reason))
        if mapped is None:
            logger.warning("unknown vLLM finish reason %r, reporting 'stop'", reason)
            mapped = "stop"
        cached = output.num_cached_tokens or 0
        return Delta(
            text=text,
            token_ids=token_ids,
            finish_reason=mapped,
            prompt_tokens=prompt_tokens,
            completion_tokens=resumed_tokens + generated_before + len(token_ids),
            # The resumed tokens sit in vLLM's prompt; only the original prompt's
            # cached part is reported as cached prompt.
            cached_prompt_tokens=min(cached, prompt_tokens),
        )

    async def abort(self, request_id: str) -> bool:
        """Abort a running or queued request; its stream ends with finish_reason "abort"."""
        if self._closed or request_id not in self._inflight:
            return False
        await self._llm.abort(request_id)
        logger.info("aborted request %s", request_id, extra={"request_id": request_id})
        return True

    # -- load & lifecycle -------------------------------------------------

    @property
    def kv_capacity_tokens(self) -> int:  # type: ignore[override]
        """KV blocks x block size, once vLLM has sized its cache (0 when it does not say)."""
        try:
            cache = self._llm.vllm_config.cache_config
            return int((cache.num_gpu_blocks or 0) * cache.block_size)
        except Exception:  # an attribute vLLM moved or has not set: unknown, not fatal
            return 0

    def scheduler_view(self) -> SchedulerView:
        """vLLM's own latest numbers, unclamped (diagnostics and tests)."""
        return self._sink.view()

    def load(self) -> LoadSnapshot:
        """Current load from memory only (never awaits the engine).

        Counts come from the scheduler's latest report, clamped by the requests
        this engine has in flight: after a cancel the in-flight set shrinks at
        once while the scheduler's report is one step old.  In-flight requests
        the scheduler has not reported yet (just submitted) count as waiting.
        """
        view = self._sink.view()
        inflight = len(self._inflight)
        running = min(view.running, inflight)
        waiting = inflight - running
        return LoadSnapshot(
            running=running,
            waiting=waiting,
            kv_cache_usage=view.kv_cache_usage,
            prefix_cache_queries=view.prefix_cache_queries,
            prefix_cache_hits=view.prefix_cache_hits,
        )

    async def shutdown(self) -> None:
        """Stop vLLM's processes; in-flight streams end with an error."""
        if self._closed:
            return
        self._closed = True
        # Called on the loop thread: vLLM closes its asyncio-bound sockets and
        # tasks directly when it runs on their loop.
        self._llm.shutdown()
        # Drop the AsyncLLM now: left for interpreter exit, its __del__ calls
        # shutdown again after module globals are gone and prints a TypeError.
        del self._llm
        logger.info("vLLM engine %s shut down", self.served_name, extra={"served_name": self.served_name})
