""":class:`SimEngine`: the step loop and the output stream of the simulated engine.

See :mod:`cluster.engine.sim` for the model and its limits.  The scheduler
(:mod:`cluster.engine.sim.scheduler`) decides who runs; this module paces the
steps, draws each running request's next word, cuts text at stop strings and
streams :class:`~cluster.engine.base.Delta`\\ s to the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from cluster.common.prefix_hash import adapter_root, chain_block_hashes
from cluster.engine.base import Chunk, Delta, Engine, EngineRequest, EngineRequestError, LoadSnapshot, OpenAICall
from cluster.engine.kv_events import KvEventSink
from cluster.engine.sim import openai as sim_openai
from cluster.engine.sim.adapters import AdapterLimits, AdapterSlots
from cluster.engine.sim.params import SimParams
from cluster.engine.sim.scheduler import FINISHED, Scheduler, Seq
from cluster.engine.sim.tokenizer import WORDS, WordCodec, render_chat

log = logging.getLogger(__name__)

BACKEND_NAME = "sim"


class SimEngine(Engine):
    """Simulated engine; see the package docstring for the model and its limits."""

    backend = BACKEND_NAME

    def __init__(
        self,
        params: SimParams | Mapping[str, Any] | None = None,
        *,
        model_name: str = "sim",
        lora: AdapterLimits | None = None,
        default_sampling: Mapping[str, Any] | None = None,
    ) -> None:
        if params is None:
            params = SimParams()
        elif not isinstance(params, SimParams):
            params = SimParams.from_dict(params)
        self.params = params
        self.model_name = model_name
        #: Sampling defaults for fields a request leaves unset (``models[].default_sampling``).
        self.default_sampling = dict(default_sampling or {})
        self.max_model_len = params.max_model_len
        self.kv_capacity_tokens = params.kv_capacity_blocks * params.block_size
        #: LoRA adapters and slots; None: LoRA off (a request naming an adapter is refused).
        self.adapters = AdapterSlots(lora, params.lora_load_ms, params.lora_disk_load_ms) if lora is not None else None
        self.scheduler = Scheduler(params, self.adapters)
        self._codec = WordCodec(vocab_size=params.vocab_size, chars_per_token=params.chars_per_token)
        self._wake = asyncio.Event()  # binds to a loop only on first wait
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- public helpers beyond the Engine interface --------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._codec.tokenize(text)

    def prompt_token_ids(self, request: EngineRequest) -> list[int]:
        """The prompt token ids of ``request``, with its chat rendered and its resumed tokens appended."""
        if request.messages is not None:
            text = render_chat(request.messages)
        elif request.prompt is not None:
            text = request.prompt
        else:
            raise EngineRequestError("request has neither a prompt nor messages")
        return self.tokenize(text) + list(request.resume_token_ids)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently findable in the prefix cache, whether in use or free."""
        return self.scheduler.pool.num_cached

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions

    @property
    def num_steps(self) -> int:
        return self.scheduler.num_steps

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The output words of ``token_ids`` (prompt ids have no text: "" for them)."""
        return " ".join(self._codec.id_words.get(i, "") for i in token_ids)

    # -- Engine interface ----------------------------------------------------

    def serve(self, call: OpenAICall) -> AsyncIterator[Chunk]:
        """One OpenAI request through the sim's small OpenAI layer (:mod:`cluster.engine.sim.openai`)."""
        return sim_openai.serve(self, call, self.default_sampling)

    async def generate(self, request: EngineRequest) -> AsyncIterator[Delta]:
        seq = self._new_seq(request)
        if seq.max_new <= 0:
            # Everything was already produced before migration.
            yield self._final_delta(seq, "length", seq.text[seq.emitted :], [])
            return
        self._submit(seq)
        finished = False
        m = self.metrics
        arrived = last = time.monotonic()
        try:
            while not finished:
                delta = await seq.out.get()
                finished = delta.finish_reason is not None
                if m is not None and delta.token_ids:
                    # The figures vLLM records: TTFT from arrival, the gap between
                    # token-bearing outputs, tokens, and E2E at the end.
                    now = time.monotonic()
                    if last == arrived:
                        m.observe_ttft(now - arrived)
                        m.add_prompt_tokens(seq.prompt_len)
                    else:
                        m.observe_itl(now - last)
                    last = now
                    m.add_generation_tokens(len(delta.token_ids))
                if m is not None and finished and delta.finish_reason != "abort":
                    m.observe_e2e(time.monotonic() - arrived)
                yield delta
        finally:
            if not finished and seq.state != FINISHED:
                # Cancelled or closed: nobody listens, so free the slot without
                # a final delta.
                self.scheduler.retire(seq)

    async def load_adapter(self, name: str, path: str) -> None:
        if self.adapters is None:
            raise EngineRequestError("LoRA is off for this model (set models[].lora)")
        self.adapters.register(name, path)

    async def unload_adapter(self, name: str) -> bool:
        if self.adapters is None:
            return False
        # Requests already running with it finish with it; new ones are refused.
        return self.adapters.unregister(name)

    async def abort(self, request_id: str) -> bool:
        seq = self.scheduler.seqs.get(request_id)
        if seq is None:
            return False
        self._abort(seq)
        return True

    def load(self) -> LoadSnapshot:
        s = self.scheduler
        a = self.adapters
        return LoadSnapshot(
            running=len(s.running),
            waiting=len(s.waiting),
            kv_cache_usage=s.pool.num_used / s.pool.num_blocks,
            prefix_cache_queries=s.queries,
            prefix_cache_hits=s.hits,
            active_adapters=a.active if a is not None else (),
            loaded_adapters=tuple(a.registered) if a is not None else (),
            adapter_swaps=a.swaps if a is not None else 0,
        )

    async def shutdown(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait does not raise the task's CancelledError, but it
            # still lets our own cancellation through.
            await asyncio.wait([task])
        self._abort_all()

    # -- request lifecycle ---------------------------------------------------

    def _new_seq(self, request: EngineRequest) -> Seq:
        if self._closed:
            raise RuntimeError("sim engine is shut down")
        if request.request_id in self.scheduler.seqs:
            raise EngineRequestError(f"request id {request.request_id!r} is already in flight")
        if any(not s for s in request.sampling.stop):
            raise EngineRequestError("stop strings must be non-empty")
        if request.lora is not None:
            if self.adapters is None:
                raise EngineRequestError(f"The model `{request.lora}` does not exist.")
            self.adapters.check(request.lora)
        ids = self.prompt_token_ids(request)
        p = self.params
        if not ids:
            raise EngineRequestError("prompt is empty")
        if len(ids) > p.max_model_len:
            raise EngineRequestError(f"prompt is {len(ids)} tokens, longer than max_model_len {p.max_model_len}")
        resumed = len(request.resume_token_ids)
        rng = random.Random(self._seed_for(request, ids[: len(ids) - resumed]))
        vocab = _vocab(request.sampling.top_k, request.sampling.top_p)
        for _ in range(resumed):  # continue the stream where the earlier replica stopped
            rng.choice(vocab)
        seq = Seq(
            request_id=request.request_id,
            token_ids=ids,
            prompt_len=len(ids),
            max_new=request.sampling.max_tokens - resumed,
            stop=list(request.sampling.stop),
            rng=rng,
            out=asyncio.Queue(),
            leading_space=resumed > 0,
            lora=request.lora,
            vocab=vocab,
        )
        if resumed and request.resume_text is not None:
            self._resume_text(seq, request.resume_token_ids, request.resume_text)
        sink = self.scheduler.pool.sink
        if sink is not None:
            # The scheduler extends these hashes as the sequence grows.
            full = ids[: len(ids) // p.block_size * p.block_size]
            seq.block_hashes = chain_block_hashes(full, p.block_size, adapter_root(request.lora))
            sink.prompt_blocks(request, seq.block_hashes, len(ids))
        return seq

    def set_kv_event_sink(self, sink: KvEventSink | None) -> None:
        """Report blocks stored and evicted to ``sink`` (``cluster.engine.kv_events``)."""
        self.scheduler.pool.sink = sink

    def _resume_text(self, seq: Seq, resumed_ids: Sequence[int], sent: str) -> None:
        """Start from the resumed words' text, of which the client has ``sent``."""
        text = self._codec.text_of(resumed_ids)
        if text is None or not text.startswith(sent):
            # Not this sim's output: continue without the resumed text.
            log.warning("resume_text does not match the resumed tokens; ignoring it", extra={"request_id": seq.request_id})
            return
        seq.text = text
        seq.emitted = len(sent)

    def _seed_for(self, request: EngineRequest, prompt_ids: list[int]) -> int:
        s = request.sampling
        if s.temperature == 0:
            # An adapter changes the model, so its greedy answer differs from the base model's.
            material = ("greedy:" if request.lora is None else f"greedy:{request.lora}:") + ",".join(map(str, prompt_ids))
        elif s.seed is not None:
            return s.seed
        else:
            material = f"{self.params.seed}:{request.request_id}"
        return int.from_bytes(hashlib.blake2b(material.encode(), digest_size=8).digest(), "big")

    def _submit(self, seq: Seq) -> None:
        self.scheduler.add(seq)
        self._ensure_started()
        self._wake.set()

    def _ensure_started(self) -> None:
        # Lazy: the engine may be built outside any event loop (e.g. in a Ray
        # actor's __init__), so the loop task starts with the first request.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{self.model_name}")
            self._task.add_done_callback(_log_crash)

    def _abort(self, seq: Seq) -> None:
        self.scheduler.retire(seq)
        seq.out.put_nowait(self._final_delta(seq, "abort", "", []))

    def _abort_all(self) -> None:
        for seq in list(self.scheduler.seqs.values()):
            self._abort(seq)

    def _final_delta(self, seq: Seq, reason: str, text: str, token_ids: list[int]) -> Delta:
        return Delta(
            text=text,
            token_ids=token_ids,
            finish_reason=reason,
            prompt_tokens=seq.prompt_len,
            completion_tokens=max(seq.num_generated, 0),
            cached_prompt_tokens=seq.cached_prompt_tokens or 0,
        )

    # -- step loop -----------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        sched = self.scheduler
        try:
            while True:
                if sched.idle:
                    self._wake.clear()
                    await self._wake.wait()
                    deadline = loop.time()
                    continue
                step_ms = sched.schedule()
                if not sched.running:
                    # SimParams guarantees that an empty cache fits any request.
                    raise RuntimeError("sim scheduler admitted nothing into an empty engine")
                # Pace against a deadline so that sleep overshoot and our own
                # overhead do not add up, but never catch up more than one step.
                step_s = step_ms * self.params.time_scale / 1000
                deadline = max(deadline, loop.time() - step_s) + step_s
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                self._decode()
        except Exception:
            self._abort_all()
            raise

    def _decode(self) -> None:
        for seq in list(self.scheduler.running.values()):
            self._emit_token(seq)

    def _emit_token(self, seq: Seq) -> None:
        word = seq.rng.choice(seq.vocab)
        token_id = self._codec.word_ids[word]
        prev_len = len(seq.text)
        seq.text += f" {word}" if seq.leading_space else word
        seq.leading_space = True
        seq.token_ids.append(token_id)
        finish = _check_stop(seq, prev_len)
        if finish is None and (seq.num_generated >= seq.max_new or seq.num_tokens >= self.params.max_model_len):
            finish = "length"
        end = len(seq.text) if finish else max(seq.emitted, len(seq.text) - seq.hold)
        text = seq.text[seq.emitted : end]
        seq.emitted = end
        if finish is None:
            seq.out.put_nowait(Delta(text=text, token_ids=[token_id]))
        else:
            self.scheduler.retire(seq)
            seq.out.put_nowait(self._final_delta(seq, finish, text, [token_id]))


def _vocab(top_k: int, top_p: float) -> tuple[str, ...]:
    """The words a request may draw: WORDS is the sim's probability order (uniform), cut by top_k and top_p.

    top_k keeps the k first words; top_p the fewest first words whose uniform
    mass reaches top_p (always one at least).  So top_k=1 or a tiny top_p is
    deterministic, as with a real model.
    """
    n = len(WORDS)
    if top_k > 0:
        n = min(n, top_k)
    if top_p < 1.0:
        n = min(n, max(1, math.ceil(top_p * len(WORDS) - 1e-9)))
    return WORDS[:n]


def _check_stop(seq: Seq, prev_len: int) -> str | None:
    """Cut the text at the earliest stop string completed by the new piece."""
    if not seq.stop:
        return None
    start = max(0, prev_len - seq.hold)
    found = [i for i in (seq.text.find(s, start) for s in seq.stop) if i != -1]
    if not found:
        return None
    seq.text = seq.text[: min(found)]
    return "stop"


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("sim engine scheduler crashed", exc_info=task.exception())
