"""What this replica's prefix cache holds, in keys every router can compute, on the load stream.

Spec: the engine reports (``cluster.engine.kv_events``) each request's prompt
block hashes and every block it stores or evicts.  The feed maps each request's
text keys (:func:`cluster.common.prefix_hash.text_keys` of its routing text,
what a router computes for the same request) to the engine block that holds
the prompt up to that text block's end (by proportion: text block j ends at
character c, so at token ``ceil(c / len(text) x prompt tokens)``), and
publishes a key while that block is cached.  Each load stream (one per router
or router worker) gets its own :class:`Feed`: its first report carries every
key held (``prefix_reset``), later ones what was stored and removed since the
stream's previous report, so every router sees the same, true picture,
evictions and other routers' traffic included.

Why text keys: the router has no tokenizer, and tokenizing every prompt there
would cost more than relaying it; the replica, which tokenizes anyway, does
the mapping.  Cost at the replica: O(prompt blocks) per request and O(1) per
block event; memory bounded by the blocks the engine caches (plus
``max_pending`` keys of requests whose blocks were never stored).
Failure modes: the proportional position is exact for a prompt and off by a
few tokens for chat (the template's tokens), so a key may be published one
block early or late; a chained key whose block was evicted while a later one
stays makes a router's match a little optimistic.  Engines without KV events
publish nothing and routers fall back to their own optimistic index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from cluster.common.prefix_hash import TEXT_BLOCK_BYTES, routing_text, text_keys
from cluster.engine.base import EngineRequest


class Feed:
    """One load stream's view: what changed since its last report."""

    def __init__(self, held: set[int]) -> None:
        self.reset = True
        self.added: set[int] = set(held)
        self.removed: set[int] = set()

    def fill(self, report: object) -> None:
        """Move the pending changes into ``report`` (a ``LoadReport``)."""
        report.prefix_reset = self.reset  # type: ignore[attr-defined]
        report.prefix_block_bytes = TEXT_BLOCK_BYTES  # type: ignore[attr-defined]
        if self.added:
            report.prefix_stored.extend(self.added)  # type: ignore[attr-defined]
            self.added = set()
        if self.removed:
            report.prefix_removed.extend(self.removed)  # type: ignore[attr-defined]
            self.removed = set()
        self.reset = False


class PrefixFeed:
    """A :class:`~cluster.engine.kv_events.KvEventSink` that keeps the text keys of cached blocks."""

    def __init__(self, max_blocks: int = 128, max_pending: int = 100_000) -> None:
        self.max_blocks = max_blocks
        self.max_pending = max_pending
        self._cached: set[int] = set()  # engine blocks holding KV now
        self._keys_of: OrderedDict[int, set[int]] = OrderedDict()  # engine block -> text keys ending in it
        self._block_of: dict[int, int] = {}  # text key -> its engine block
        self.held: set[int] = set()  # published keys
        self._feeds: list[Feed] = []

    # -- the engine's side ----------------------------------------------------

    def prompt_blocks(self, request: EngineRequest, block_hashes: Sequence[int], num_prompt_tokens: int) -> None:
        if not block_hashes or request.resume_token_ids or request.lora:
            # A resumed prompt is prompt + generated tokens (its text is not the router's); an adapter's
            # KV is not the base model's, and text keys do not name the adapter: neither is published.
            return
        text = routing_text(request.prompt, [m.content for m in request.messages] if request.messages is not None else None)
        keys = text_keys(text, TEXT_BLOCK_BYTES, self.max_blocks)
        if not keys:
            return
        n_bytes = len(text.encode())
        block_size = max(1, num_prompt_tokens // max(len(block_hashes), 1))
        for j, key in enumerate(keys):
            token = -(-(j + 1) * TEXT_BLOCK_BYTES * num_prompt_tokens // n_bytes)  # ceil
            b = min(max(token - 1, 0) // block_size, len(block_hashes) - 1)
            self._map(key, block_hashes[b])
        while len(self._keys_of) > self.max_pending + len(self._cached):
            old, ks = self._keys_of.popitem(last=False)
            if old in self._cached:
                self._keys_of[old] = ks  # still cached: keep, drop an older pending one next
                self._keys_of.move_to_end(old, last=False)
                break
            for k in ks:
                self._block_of.pop(k, None)

    def _map(self, key: int, block: int) -> None:
        prev = self._block_of.get(key)
        if prev == block:
            return
        if prev is not None:
            self._keys_of.get(prev, set()).discard(key)
        self._block_of[key] = block
        ks = self._keys_of.get(block)
        if ks is None:
            ks = self._keys_of[block] = set()
        ks.add(key)
        if block in self._cached:
            self._publish(key)
        elif key in self.held:
            self._unpublish(key)

    def stored(self, block_hash: int) -> None:
        self._cached.add(block_hash)
        for k in self._keys_of.get(block_hash, ()):
            self._publish(k)

    def removed(self, block_hash: int) -> None:
        self._cached.discard(block_hash)
        for k in self._keys_of.pop(block_hash, ()):
            self._block_of.pop(k, None)
            self._unpublish(k)

    # -- the load streams' side -----------------------------------------------

    def subscribe(self) -> Feed:
        feed = Feed(self.held)
        self._feeds.append(feed)
        return feed

    def unsubscribe(self, feed: Feed) -> None:
        self._feeds.remove(feed)

    def _publish(self, key: int) -> None:
        if key in self.held:
            return
        self.held.add(key)
        for f in self._feeds:
            f.removed.discard(key)
            f.added.add(key)

    def _unpublish(self, key: int) -> None:
        if key not in self.held:
            return
        self.held.discard(key)
        for f in self._feeds:
            if key in f.added:
                f.added.discard(key)
            else:
                f.removed.add(key)


def attach_prefix_feed(engine: object) -> PrefixFeed | None:
    """A feed wired to ``engine``'s KV events, or None for an engine without them (routers then guess)."""
    setter = getattr(engine, "set_kv_event_sink", None)
    if setter is None:
        return None
    feed = PrefixFeed()
    setter(feed)
    return feed
