"""What the replicas say their prefix caches hold (not a policy): the true side of prefix routing.

Replicas whose engine reports KV-cache events publish, on their load stream,
the text keys (:func:`cluster.common.prefix_hash.text_keys`) of the prompt
prefixes they hold: the whole set on a stream's first report, then what was
stored and evicted (``cluster/replica/prefix_feed.py``).  The router applies
them here as they arrive, O(changes); every router and router worker
subscribed to the same replicas holds the same picture, whoever sent the
traffic, evictions included.  The prefix index (``prefix_index.py``) looks
keys up here beside its own optimistic record of what it just sent.

Memory: 8 bytes and a map slot per key a replica holds (about one per 128
bytes of cached prompt text).  Failure modes: a report lost with its stream
is made good by the next stream's full set; up to one report interval
(100 ms) old.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from cluster.router.policies.base import ReplicaView

Holders = dict[int, "ReplicaView | set[ReplicaView]"]


def add_holder(holders: Holders, key: int, h: ReplicaView) -> None:
    hol = holders.get(key)
    if hol is None:
        holders[key] = h
    elif type(hol) is set:
        hol.add(h)
    elif hol is not h:
        holders[key] = {hol, h}  # type: ignore[arg-type]


def drop_holder(holders: Holders, key: int, h: ReplicaView) -> None:
    hol = holders.get(key)
    if hol is h:
        del holders[key]
    elif type(hol) is set:
        hol.discard(h)
        if len(hol) == 1:
            holders[key] = next(iter(hol))


class _Report(Protocol):
    prefix_stored: Iterable[int]
    prefix_removed: Iterable[int]
    prefix_reset: bool
    prefix_block_bytes: int


class EvictionListener(Protocol):
    def evicted(self, h: ReplicaView, keys: Iterable[int]) -> None: ...


class PublishedPrefixes:
    def __init__(self) -> None:
        self.holders: Holders = {}
        self._keys: dict[ReplicaView, set[int]] = {}
        #: Text block size of the keys the replicas publish (0: none publishes yet).
        self.block_bytes = 0
        #: Indexes told of evictions, so their optimistic record forgets them too.
        self.listeners: list[EvictionListener] = []

    def publishes(self, h: ReplicaView) -> bool:
        return h in self._keys

    def keys_of(self, h: ReplicaView) -> int:
        return len(self._keys.get(h, ()))

    def apply(self, h: ReplicaView, report: _Report) -> None:
        """One load report's prefix fields from ``h``."""
        if not report.prefix_block_bytes:
            return
        self.block_bytes = report.prefix_block_bytes
        keys = self._keys.get(h)
        if keys is None or report.prefix_reset:
            if keys:
                self._remove(h, keys, list(keys))
            keys = self._keys[h] = set()
        holders = self.holders
        for k in report.prefix_stored:
            if k not in keys:
                keys.add(k)
                add_holder(holders, k, h)
        removed = [k for k in report.prefix_removed if k in keys]
        if removed:
            self._remove(h, keys, removed)

    def _remove(self, h: ReplicaView, keys: set[int], removed: list[int]) -> None:
        for k in removed:
            keys.discard(k)
            drop_holder(self.holders, k, h)
        for listener in self.listeners:
            listener.evicted(h, removed)

    def forget(self, h: ReplicaView) -> None:
        """``h`` left the set (or its stream broke for good): drop what it published."""
        keys = self._keys.pop(h, None)
        for k in keys or ():
            drop_holder(self.holders, k, h)
