"""What an engine tells about its prefix cache: which KV blocks it stores and evicts.

The engine-side half of prefix routing on true cache state (the replica's
prefix feed, ``cluster/replica/prefix_feed.py``, is the other): an engine with
a prefix cache may accept a :class:`KvEventSink` and call it as vLLM's KV
cache events do (``BlockStored`` / ``BlockRemoved``), plus once per request
with the chain of its prompt's full-block hashes, so the listener can tell
which part of which prompt a stored block holds.  Block hashes are opaque and
engine-local; nothing here knows about routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cluster.engine.base import EngineRequest


class KvEventSink(Protocol):
    def prompt_blocks(self, request: EngineRequest, block_hashes: Sequence[int], num_prompt_tokens: int) -> None:
        """``request``'s prompt spans these full blocks (in order), before any is stored for it."""

    def stored(self, block_hash: int) -> None:
        """A block now holds cached KV under ``block_hash`` (a later request can reuse it)."""

    def removed(self, block_hash: int) -> None:
        """The block cached under ``block_hash`` was evicted."""
