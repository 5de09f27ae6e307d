"""The prompt prefixes each replica holds: what replicas publish, plus what this router just sent.

Not a policy: the prefix-aware and weighted policies share it.

A prompt is cut into blocks and each block gets a *chained* key (a function of
every block up to it), so equal keys at position i mean equal prompts up to
block i, and the longest run of a prompt's keys found for a replica is its
longest prefix there.  Blocks are fixed-size byte blocks of the text by
default (:func:`cluster.common.prefix_hash.text_keys`, ``block_chars`` bytes):
the router has no tokenizer, and hashing text costs less than tokenizing.
With ``hash_unit: sim_tokens`` the sim engine's own tokenizer and block hashes
are used (:mod:`cluster.common.prefix_hash`, which the sim shares).

Two sources, looked up together: replicas that report KV-cache events
publish the text keys they hold (``published.py``: the true picture, shared by
every router, evictions included; text unit only, with the replicas' block
size); and this router's own optimistic record of what it sent, which covers
the ~100 ms before a replica's next report and every replica whose engine
publishes nothing.  For a publishing replica the record is kept short
(``_RECENT_FOR_PUBLISHERS`` keys) and forgets a key the replica evicts.

Memory is bounded twice: each replica's entries form an LRU sized to what its
KV cache can hold (``kv_capacity_tokens`` from its load reports, divided by
the tokens per block; a default when unknown; ``max_index_blocks`` at most,
and at most an even share of ``max_index_entries`` over the model's replicas),
so the index forgets what the replica has most likely evicted; and a replica
that left the set is forgotten as soon as it is met again.  A lookup is
O(log blocks + a bounded number of holders), independent of the number of
replicas and of how many hold a hot prefix, thanks to a global hash ->
holders map.

Failure modes: for a replica that publishes nothing the index is what *this
router* sent, not what the replica holds — other routers' traffic and the
replica's own evictions make it optimistic; a wrong guess costs one cache
miss, never a wrong answer.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable

from cluster.common.prefix_hash import DEFAULT_BLOCK_SIZE, chain_block_hashes, text_keys, tokenize
from cluster.config import PrefixAwareOptions
from cluster.router.policies.base import ReplicaView
from cluster.router.policies.published import Holders, PublishedPrefixes, add_holder, drop_holder

# Rough tokens per character of English-like text, to turn a KV capacity in
# tokens into a number of text blocks.
_CHARS_PER_TOKEN = 4
_SIM_BLOCK_TOKENS = DEFAULT_BLOCK_SIZE
#: Recent sends remembered for a replica that publishes what it holds (the ~100 ms before its report).
_RECENT_FOR_PUBLISHERS = 2048


class PrefixIndex:
    def __init__(self, opts: PrefixAwareOptions) -> None:
        self.opts = opts
        self._holders: Holders = {}
        self._lru: dict[ReplicaView, OrderedDict[int, None]] = {}
        #: What the replicas publish (the router's ReplicaSet attaches it; None: optimistic only).
        self._published: PublishedPrefixes | None = None
        self._pub_holders: Holders = {}

    def attach(self, published: PublishedPrefixes) -> None:
        """Look keys up in what the replicas publish too, and forget sends they evicted."""
        self._published = published
        self._pub_holders = published.holders if self.opts.hash_unit == "text" else {}
        published.listeners.append(self)

    def evicted(self, h: ReplicaView, keys: Iterable[int]) -> None:
        lru = self._lru.get(h)
        if lru:
            for k in keys:
                if lru.pop(k, 0) is None:
                    drop_holder(self._holders, k, h)

    # -- hashing --------------------------------------------------------------

    def hashes(self, text: str) -> list[int]:
        o = self.opts
        if o.hash_unit == "sim_tokens":
            ids = tokenize(text[: o.max_blocks * _SIM_BLOCK_TOKENS * 8])
            return chain_block_hashes(ids[: o.max_blocks * _SIM_BLOCK_TOKENS], _SIM_BLOCK_TOKENS)
        return text_keys(text, o.block_chars, o.max_blocks)

    # -- lookup and update ----------------------------------------------------

    def matches(self, hashes: list[int], max_holders: int = 16) -> dict[ReplicaView, int]:
        """Replicas recently sent a prefix of ``hashes`` -> how many leading blocks (at most ~3 x ``max_holders`` replicas).

        The longest matched prefix is found by binary search (hashes are
        chained, so a prompt's blocks are present as a prefix; an eviction gap
        only shortens the match).  Its holders are examined, then those of
        two shorter depths (3/4 and 1/2 of it), at most ``max_holders`` at
        each: a hot prefix held by hundreds of replicas costs no more than a
        cold one.
        """
        holders, pub = self._holders, self._pub_holders
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in holders or hashes[mid - 1] in pub:
                lo = mid
            else:
                hi = mid - 1
        depth: dict[ReplicaView, int] = {}
        if lo == 0:
            return depth
        for level in sorted({lo, (3 * lo + 3) // 4, (lo + 1) // 2}, reverse=True):
            key = hashes[level - 1]
            for hol in (pub.get(key), holders.get(key)):
                if hol is None:
                    continue
                if type(hol) is set:
                    found = hol if len(hol) <= max_holders else itertools.islice(hol, max_holders)
                else:
                    found = (hol,)  # type: ignore[assignment]
                for h in found:
                    if h not in depth:
                        depth[h] = level
        gone = [h for h in depth if h.removed]
        for h in gone:
            del depth[h]
            self.forget(h)
        return depth

    def capacity(self, h: ReplicaView) -> int:
        o = self.opts
        if self._published is not None and self.opts.hash_unit == "text" and self._published.publishes(h):
            return _RECENT_FOR_PUBLISHERS
        share = max(1, o.max_index_entries // max(h.group.size, 1))
        kv = h.load.kv_capacity_tokens if h.load is not None else 0
        if not kv:
            return min(o.default_index_blocks, o.max_index_blocks, share)
        per_block = _SIM_BLOCK_TOKENS if o.hash_unit == "sim_tokens" else max(1, o.block_chars // _CHARS_PER_TOKEN)
        return max(1, min(o.max_index_blocks, share, kv // per_block))

    def record(self, h: ReplicaView, hashes: list[int]) -> None:
        """Remember that ``hashes`` were just sent to ``h`` (most recent last)."""
        if not hashes:
            return
        lru = self._lru.get(h)
        if lru is None:
            lru = self._lru[h] = OrderedDict()
        holders = self._holders
        for bh in hashes:
            if bh in lru:
                lru.move_to_end(bh)
                continue
            lru[bh] = None
            add_holder(holders, bh, h)
        over = len(lru) - self.capacity(h)
        for _ in range(over):
            bh, _ = lru.popitem(last=False)
            drop_holder(self._holders, bh, h)

    def forget(self, h: ReplicaView) -> None:
        lru = self._lru.pop(h, None)
        for bh in lru or ():
            drop_holder(self._holders, bh, h)

    # -- introspection (tests, benchmarks) -----------------------------------

    def entries(self, h: ReplicaView | None = None) -> int:
        if h is not None:
            return len(self._lru.get(h, ()))
        return sum(len(v) for v in self._lru.values())

    @property
    def distinct_blocks(self) -> int:
        return len(self._holders)
