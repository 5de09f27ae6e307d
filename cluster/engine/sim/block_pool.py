"""The sim's KV block pool with a prefix cache, as vLLM v1's block pool works.

A full block is registered under its chained hash
(:func:`cluster.common.prefix_hash.chain_block_hashes`) when it is allocated.
A free block keeps its hash, and stays findable, until it is reallocated.  The
free queue is ordered by release time, so allocation evicts the least recently
released block first, and a request's tail blocks are released before its head.
With a ``sink`` (``cluster.engine.kv_events``) every block registered and
every cached block evicted is reported, as vLLM's KV cache events do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from cluster.engine.kv_events import KvEventSink


class Block:
    __slots__ = ("block_hash", "block_id", "ref_cnt")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None


class BlockPool:
    """Fixed set of KV blocks, with a hash -> block prefix cache and LRU reuse."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: OrderedDict[int, Block] = OrderedDict((i, Block(i)) for i in range(num_blocks))
        self._by_hash: dict[int, Block] = {}
        self.sink: KvEventSink | None = None

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

    def longest_cached_prefix(self, hashes: Iterable[int]) -> list[Block]:
        hits: list[Block] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def acquire(self, blocks: Iterable[Block]) -> None:
        """Take a reference on cache hits, removing free ones from the eviction queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[Block]:
        if n > len(self._free):
            raise RuntimeError(f"sim block pool: asked for {n} blocks, {len(self._free)} free")
        out: list[Block] = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                # Evict: the block's old content is overwritten.
                del self._by_hash[block.block_hash]
                if self.sink is not None:
                    self.sink.removed(block.block_hash)
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def register(self, block: Block, block_hash: int) -> None:
        # A duplicate (same content computed twice concurrently) stays unhashed,
        # as in vLLM; the first copy serves future hits.
        if block.block_hash is None and block_hash not in self._by_hash:
            block.block_hash = block_hash
            self._by_hash[block_hash] = block
            if self.sink is not None:
                self.sink.stored(block_hash)

    def release(self, blocks: Sequence[Block]) -> None:
        # Tail first: a chain's last blocks are the least likely to be shared,
        # so they should be evicted before its head.
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block
