"""The vLLM backend: an :class:`~cluster.engine.base.Engine` over vLLM v1's ``AsyncLLM``.

Why it looks the way it does:

- ``AsyncLLM`` runs the scheduler and model in child processes and streams
  ``RequestOutput`` objects back over ZMQ.  Requests are served through vLLM's
  own OpenAI serving layer over it (:mod:`vllm_serving`), built from the model's
  ``serve_args`` as ``vllm serve`` builds it, so the replica answers exactly
  as vLLM's OpenAI server does (tools, structured outputs, logprobs, every
  sampling field, errors); migrated requests resume through :mod:`vllm_tap`.
- ``default_sampling`` (the cluster config's per-model sampling defaults)
  becomes vLLM's ``override_generation_config``, as ``vllm serve
  --override-generation-config`` does; the rest come from the model's
  ``generation_config.json``.
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
from collections.abc import AsyncIterator
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, MultiModalCacheStats, SchedulerStats

from cluster.engine.base import Chunk, Engine, LoadSnapshot, MetricsRecorder, ModelCard, OpenAICall
from cluster.engine.vllm_args import SHARED_WITH_ENGINE
from cluster.engine.vllm_serving import VllmOpenAI

logger = logging.getLogger(__name__)

GiB = 1 << 30

#: KV cache reserved on CPU when neither ``engine_args`` nor the
#: ``VLLM_CPU_KVCACHE_SPACE`` environment variable sizes it.  vLLM's own CPU
#: default asks for 90 % of the machine's RAM (``gpu_memory_utilization``) and
#: refuses to start when other processes hold more than 10 %; 1 GiB still holds
#: ~45k tokens of SmolLM2-135M context.
CPU_DEFAULT_KV_CACHE_BYTES = 1 * GiB

#: Set on CPU unless already set (``models[].env`` may): vLLM 0.32 on torch >= 2.10 saves the compiled model
#: as one AOT artifact, which it cannot load back on CPU ("'function' object has no attribute
#: 'finalize_loading'": the CPU's compiled mode is plain inductor), so every start compiled from scratch.
CPU_COMPILE_ENV = {"VLLM_USE_AOT_COMPILE": "0"}


def use_cpu_compile_cache(environ: Any = os.environ) -> None:
    """Make a CPU replica's second start reuse what its first compiled.

    Without the AOT artifact (:data:`CPU_COMPILE_ENV`) the compiled graphs go to inductor's own cache, kept
    under vLLM's (``$VLLM_CACHE_ROOT``, ``~/.cache/vllm``) unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    for key, value in CPU_COMPILE_ENV.items():
        environ.setdefault(key, value)
    root = environ.get("VLLM_CACHE_ROOT") or os.path.join(os.path.expanduser("~"), ".cache", "vllm")
    # torch writes its /tmp default into the environment the first time it looks (at vLLM's import here).
    if environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, "", os.path.abspath(default_cache_dir())):
        environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "torch_compile_cache", "inductor")


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
        # vLLM's compiled mode, as `vllm serve` runs it: it decodes faster than
        # eager; the first start pays for compiling, later ones load the result
        # from vLLM's compile cache (~/.cache/vllm unless VLLM_CACHE_ROOT says
        # otherwise).  engine_args {enforce_eager: true} starts faster instead.
        sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & overrides.keys()
        if not sized and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = CPU_DEFAULT_KV_CACHE_BYTES
    kwargs.update(overrides)
    return AsyncEngineArgs(**kwargs)


def merge_engine_args(
    engine_args: dict[str, Any] | None, serve_args: dict[str, Any] | None, default_sampling: dict[str, Any] | None
) -> dict[str, Any]:
    """The engine arguments a model's config implies, as `vllm serve` would take them.

    ``serve_args`` flags the engine reads too (the reasoning parser) join them;
    ``default_sampling`` becomes ``override_generation_config`` (over the one in
    ``engine_args``, if any), exactly what ``--override-generation-config`` does.
    """
    merged = dict(engine_args or {})
    for key in SHARED_WITH_ENGINE:
        if key in (serve_args or {}):
            merged[key] = serve_args[key]  # type: ignore[index]
    if default_sampling:
        merged["override_generation_config"] = {**(merged.get("override_generation_config") or {}), **default_sampling}
    return merged


class VllmEngine(Engine):
    """One model replica served by vLLM's ``AsyncLLM``; build it with :meth:`create`."""

    def __init__(self, llm: AsyncLLM, openai: VllmOpenAI, *, served_name: str, sink: _StatsSink, root: str = "") -> None:
        self._llm = llm
        self._openai = openai
        self._sink = sink
        self.served_name = served_name
        self.root = root
        # Read after start-up: vLLM may lower max_model_len to fit the KV cache.
        self.max_model_len = int(llm.model_config.max_model_len)
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
        serve_args: dict[str, Any] | None = None,
        default_sampling: dict[str, Any] | None = None,
    ) -> VllmEngine:
        """Start vLLM for ``model`` (a local directory or hub id) and wait until ready.

        ``engine_args`` are passed to ``AsyncEngineArgs`` and override the
        defaults (on CPU: a 1 GiB KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` is
        set; compiled mode, ``enforce_eager=True`` to start faster); an unknown
        key raises ``ValueError``.
        ``serve_args`` are `vllm serve` flags for the OpenAI layer
        (:mod:`vllm_args`); ``default_sampling`` overrides the model's
        ``generation_config.json`` (``override_generation_config``).
        """
        from vllm.platforms import current_platform

        serve_args = dict(serve_args or {})
        merged = merge_engine_args(engine_args, serve_args, default_sampling)
        on_cpu = current_platform.is_cpu()
        args = _build_engine_args(
            model,
            served_name,
            merged,
            tensor_parallel_size,
            pipeline_parallel_size,
            executor_backend,
            on_cpu,
        )
        if on_cpu:
            use_cpu_compile_cache()  # read by vLLM's engine processes, which inherit it
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
        try:
            openai = await VllmOpenAI.create(llm, args, serve_args)
        except BaseException:
            llm.shutdown()
            raise
        engine = cls(llm, openai, served_name=served_name, sink=sink, root=model)
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

    @property
    def model_card(self) -> ModelCard:
        return ModelCard(max_model_len=self.max_model_len, root=self.root)

    # -- requests ---------------------------------------------------------

    async def serve(self, call: OpenAICall) -> AsyncIterator[Chunk]:
        """Answer one OpenAI request through vLLM's serving layer; closing the iterator aborts it."""
        if self._closed:
            raise RuntimeError("engine is shut down")
        key = call.request_id
        while key in self._inflight:  # the same id twice (a retry racing its abort): count both
            key += "+"
        self._inflight[key] = time.monotonic()
        try:
            async for chunk in self._openai.serve(call):
                yield chunk
        finally:
            self._inflight.pop(key, None)

    async def load_adapter(self, name: str, path: str) -> None:
        await self._openai.load_adapter(name, path)

    async def unload_adapter(self, name: str) -> bool:
        return await self._openai.unload_adapter(name)

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
            # vLLM does not report which adapters occupy its slots: every loaded one may be active.
            active_adapters=self._openai.adapters(),
            loaded_adapters=self._openai.adapters(),
        )

    async def shutdown(self) -> None:
        """Stop vLLM's processes; in-flight streams end with an error."""
        if self._closed:
            return
        self._closed = True
        # Called on the loop thread: vLLM closes its asyncio-bound sockets and
        # tasks directly when it runs on their loop.
        self._llm.shutdown()
        # Drop the AsyncLLM now (and the serving layer's references to it): left
        # for interpreter exit, its __del__ calls shutdown again after module
        # globals are gone and prints a TypeError.
        self._openai.close()
        del self._llm
        logger.info("vLLM engine %s shut down", self.served_name, extra={"served_name": self.served_name})
