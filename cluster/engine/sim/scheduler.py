"""The sim's continuous-batching scheduler: who waits, who runs, and who holds which KV blocks.

One call to :meth:`Scheduler.schedule` is the bookkeeping half of a step (the
engine sleeps for the time it returns, then emits one token per running
request):

1. Running requests take the blocks they grow into, oldest first.  When the
   cache is full, the newest running request is preempted (recompute, as in
   vLLM): it frees its blocks and goes back to the head of the queue.
2. The head of the queue is admitted while it fits (FIFO: a head that does not
   fit blocks everyone behind it), up to ``max_num_seqs`` running and
   ``max_num_batched_tokens`` per step; the first prefill of a step is always
   admitted, because prefills are never chunked.

Admission looks up the longest cached prefix among the full blocks of the
first ``n - 1`` tokens and counts prefix-cache queries and hits in tokens.

With LoRA on (:mod:`cluster.engine.sim.adapters`), a waiting request whose
adapter cannot get an active slot this step is skipped rather than blocking
the queue (as vLLM's scheduler does), and an adapter put into a slot adds its
load time to the step.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from cluster.common.prefix_hash import adapter_root, chain_block_hashes
from cluster.engine.base import Delta
from cluster.engine.sim.adapters import AdapterSlots
from cluster.engine.sim.block_pool import Block, BlockPool
from cluster.engine.sim.params import SimParams
from cluster.engine.sim.tokenizer import WORDS

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False, slots=True)
class Seq:
    """One request inside the sim: its tokens and blocks (scheduler) and its text so far (engine)."""

    request_id: str
    token_ids: list[int]  # prompt (incl. resumed tokens), then generated
    prompt_len: int
    max_new: int
    stop: list[str]
    rng: random.Random
    out: asyncio.Queue[Delta]
    leading_space: bool  # false only for the very first word of a fresh request
    state: str = WAITING
    text: str = ""
    emitted: int = 0  # chars of text already sent
    blocks: list[Block] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered: int = 0  # leading blocks whose hash is in the pool
    cached_prompt_tokens: int | None = None  # set at first admission
    lora: str | None = None  # the adapter it runs with
    vocab: tuple[str, ...] = WORDS  # the words it draws from (top_k / top_p)

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


class Scheduler:
    """The waiting queue, the running set and the block pool of one sim engine."""

    def __init__(self, params: SimParams, adapters: AdapterSlots | None = None) -> None:
        self.params = params
        self.adapters = adapters
        self._lora_refs: Counter[str] = Counter()  # adapter -> running requests using it
        self.pool = BlockPool(params.kv_capacity_blocks)
        self.waiting: deque[Seq] = deque()
        self.running: dict[str, Seq] = {}  # insertion order = admission order
        self.seqs: dict[str, Seq] = {}
        self.queries = 0  # prefix-cache tokens looked up, cumulative
        self.hits = 0  # prefix-cache tokens found, cumulative
        self.num_preemptions = 0
        self.num_steps = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, seq: Seq) -> None:
        self.seqs[seq.request_id] = seq
        self.waiting.append(seq)

    def retire(self, seq: Seq) -> None:
        """Remove ``seq`` from the scheduler and free its blocks."""
        if seq.state == WAITING:
            self.waiting.remove(seq)
        elif seq.state == RUNNING:
            del self.running[seq.request_id]
            self._unref(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.state = FINISHED
        if self.seqs.get(seq.request_id) is seq:
            del self.seqs[seq.request_id]

    def schedule(self) -> float:
        """Grow running requests, admit waiting ones; returns this step's engine time in ms."""
        self.num_steps += 1
        self._grow_running()
        prefill_ms = self._admit()
        return prefill_ms + self.params.step_ms(len(self.running))

    def register_full_blocks(self, seq: Seq) -> None:
        """Make the full blocks of ``seq``'s KV shareable, including those of generated text."""
        full = min(seq.num_tokens // self.params.block_size, len(seq.blocks))
        self._extend_hashes(seq, full)
        for i in range(seq.num_registered, full):
            self.pool.register(seq.blocks[i], seq.block_hashes[i])
        seq.num_registered = max(seq.num_registered, full)

    def _blocks_for(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.params.block_size)

    def _grow_running(self) -> None:
        # Older requests grow first.  On shortage the newest is preempted, as in
        # vLLM, so that the requests closest to done keep going.
        for seq in list(self.running.values()):
            if seq.state != RUNNING:
                continue  # preempted earlier in this loop
            need = self._blocks_for(seq.num_tokens) - len(seq.blocks)
            while need > self.pool.num_free and seq.state == RUNNING:
                self._preempt(next(reversed(self.running.values())))
            if seq.state == RUNNING:
                if need > 0:
                    seq.blocks.extend(self.pool.allocate(need))
                self.register_full_blocks(seq)

    def _unref(self, seq: Seq) -> None:
        if seq.lora is not None:
            self._lora_refs[seq.lora] -= 1
            if self._lora_refs[seq.lora] <= 0:
                del self._lora_refs[seq.lora]

    def _preempt(self, seq: Seq) -> None:
        del self.running[seq.request_id]
        self._unref(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.num_registered = 0
        seq.state = WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _admit(self) -> float:
        p = self.params
        budget = p.max_num_batched_tokens - len(self.running)  # one token per running decode
        prefill_ms = 0.0
        admitted = 0
        skipped: list[Seq] = []  # their adapter has no slot this step; they keep their place
        while self.waiting and len(self.running) < p.max_num_seqs:
            seq = self.waiting[0]
            if self.adapters is not None and not self.adapters.can_run(seq.lora, self._lora_refs):
                skipped.append(self.waiting.popleft())
                continue
            hits = self._lookup(seq)
            uncached = seq.num_tokens - len(hits) * p.block_size
            if admitted and uncached > budget:
                break
            need_new = self._blocks_for(seq.num_tokens) - len(hits)
            # Hits that are free now leave the free queue when acquired.
            if need_new > self.pool.num_free - sum(1 for b in hits if b.ref_cnt == 0):
                break  # FIFO: the head waits, and so does everyone behind it
            self.waiting.popleft()
            if self.adapters is not None:
                prefill_ms += self.adapters.activate(seq.lora, self._lora_refs)
            self._start(seq, hits, need_new)
            budget -= uncached
            admitted += 1
            prefill_ms += p.prefill_ms(uncached)
        self.waiting.extendleft(reversed(skipped))
        return prefill_ms

    def _start(self, seq: Seq, hits: list[Block], need_new: int) -> None:
        """Give an admitted ``seq`` its cached and new blocks and count its prefix-cache lookup."""
        bs = self.params.block_size
        self.pool.acquire(hits)
        seq.blocks = hits + self.pool.allocate(need_new)
        seq.num_registered = len(hits)
        self.register_full_blocks(seq)
        self.queries += seq.num_tokens
        self.hits += len(hits) * bs
        if seq.cached_prompt_tokens is None:
            seq.cached_prompt_tokens = len(hits) * bs
        seq.state = RUNNING
        self.running[seq.request_id] = seq
        if seq.lora is not None:
            self._lora_refs[seq.lora] += 1

    def _lookup(self, seq: Seq) -> list[Block]:
        # At most the full blocks within the first n-1 tokens, so at least one
        # token is computed and produces logits.
        max_blocks = (seq.num_tokens - 1) // self.params.block_size
        self._extend_hashes(seq, max_blocks)
        return self.pool.longest_cached_prefix(seq.block_hashes[:max_blocks])

    def _extend_hashes(self, seq: Seq, num_blocks: int) -> None:
        bs = self.params.block_size
        start = len(seq.block_hashes) * bs
        parent = seq.block_hashes[-1] if seq.block_hashes else adapter_root(seq.lora)
        seq.block_hashes.extend(chain_block_hashes(seq.token_ids[start : num_blocks * bs], bs, parent))
