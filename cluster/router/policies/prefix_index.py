"""An approximate, bounded index of the prompt prefixes recently sent to each replica.

Not a policy: the prefix-aware and weighted policies share it.

A prompt is cut into blocks and each block gets a *chained* hash (the hash of
the previous block's hash and this block), so equal hashes at position i mean
equal prompts up to block i, and the longest run of a prompt's hashes found
for a replica is its longest prefix sent there.  Blocks are fixed-size
character blocks of the text by default: the router has no tokenizer, and
hashing characters costs less than tokenizing.  With ``hash_unit:
sim_tokens`` the sim engine's own tokenizer and block hashes are used
(:mod:`cluster.common.prefix_hash`, which the sim shares).

Memory is bounded twice: each replica's entries form an LRU sized to what its
KV cache can hold (``kv_capacity_tokens`` from its load reports, divided by
the tokens per block; a default when unknown; ``max_index_blocks`` at most,
and at most an even share of ``max_index_entries`` over the model's replicas),
so the index forgets what the replica has most likely evicted; and a replica
that left the set is forgotten as soon as it is met again.  A lookup is
O(log blocks + a bounded number of holders), independent of the number of
replicas and of how many hold a hot prefix, thanks to a global hash ->
holders map.

Failure modes: the index is what *this router* sent, not what the replica
holds — other routers' traffic and the replica's own evictions make it
optimistic; a wrong guess costs one cache miss, never a wrong answer.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from cluster.common.prefix_hash import DEFAULT_BLOCK_SIZE, chain_block_hashes, tokenize
from cluster.config import PrefixAwareOptions
from cluster.router.policies.base import ReplicaView

# Rough tokens per character of English-like text, to turn a KV capacity in
# tokens into a number of text blocks.
_CHARS_PER_TOKEN = 4
_SIM_BLOCK_TOKENS = DEFAULT_BLOCK_SIZE


class PrefixIndex:
    def __init__(self, opts: PrefixAwareOptions) -> None:
        self.opts = opts
        self._holders: dict[int, ReplicaView | set[ReplicaView]] = {}
        self._lru: dict[ReplicaView, OrderedDict[int, None]] = {}

    # -- hashing --------------------------------------------------------------

    def hashes(self, text: str) -> list[int]:
        o = self.opts
        if o.hash_unit == "sim_tokens":
            ids = tokenize(text[: o.max_blocks * _SIM_BLOCK_TOKENS * 8])
            return chain_block_hashes(ids[: o.max_blocks * _SIM_BLOCK_TOKENS], _SIM_BLOCK_TOKENS)
        bc = o.block_chars
        end = min(len(text) // bc, o.max_blocks) * bc
        out: list[int] = []
        parent = 0
        for i in range(0, end, bc):
            parent = hash((parent, text[i : i + bc]))
            out.append(parent)
        return out

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
        holders = self._holders
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in holders:
                lo = mid
            else:
                hi = mid - 1
        depth: dict[ReplicaView, int] = {}
        if lo == 0:
            return depth
        for level in sorted({lo, (3 * lo + 3) // 4, (lo + 1) // 2}, reverse=True):
            hol = holders.get(hashes[level - 1])
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
            hol = holders.get(bh)
            if hol is None:
                holders[bh] = h
            elif type(hol) is set:
                hol.add(h)
            elif hol is not h:
                holders[bh] = {hol, h}  # type: ignore[arg-type]
        over = len(lru) - self.capacity(h)
        for _ in range(over):
            bh, _ = lru.popitem(last=False)
            self._drop(bh, h)

    def forget(self, h: ReplicaView) -> None:
        lru = self._lru.pop(h, None)
        for bh in lru or ():
            self._drop(bh, h)

    def _drop(self, bh: int, h: ReplicaView) -> None:
        hol = self._holders.get(bh)
        if hol is h:
            del self._holders[bh]
        elif type(hol) is set:
            hol.discard(h)
            if len(hol) == 1:
                self._holders[bh] = next(iter(hol))

    # -- introspection (tests, benchmarks) -----------------------------------

    def entries(self, h: ReplicaView | None = None) -> int:
        if h is not None:
            return len(self._lru.get(h, ()))
        return sum(len(v) for v in self._lru.values())

    @property
    def distinct_blocks(self) -> int:
        return len(self._holders)
