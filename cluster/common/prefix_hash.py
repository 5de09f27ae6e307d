"""The sim engine's tokenizer and chained block hashes, shared with the router.

The sim engine (``cluster/engine/sim``) caches KV blocks under these hashes;
the prefix index (``cluster/router/policies/prefix_index.py``) with
``hash_unit: sim_tokens`` computes the very same ones, so it can predict the
sim's cache hits exactly.  Both are stable across processes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

#: The sim's defaults (``SimParams``): tokens per KV block, vocabulary, characters per token.
DEFAULT_BLOCK_SIZE = 16
DEFAULT_VOCAB_SIZE = 49_152
DEFAULT_CHARS_PER_TOKEN = 4


def tokenize(text: str, *, vocab_size: int = DEFAULT_VOCAB_SIZE, chars_per_token: int = DEFAULT_CHARS_PER_TOKEN) -> list[int]:
    """Whitespace words, cut into ``chars_per_token`` pieces, each hashed to an id."""
    ids: list[int] = []
    for word in text.split():
        for i in range(0, len(word), chars_per_token):
            ids.append(zlib.crc32(word[i : i + chars_per_token].encode()) % vocab_size)
    return ids


def chain_block_hashes(token_ids: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids`` (a partial tail block has none)."""
    hashes: list[int] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


def adapter_root(adapter: str | None) -> int | None:
    """Parent hash of a request's first block: KV computed with a LoRA adapter is not the base model's, so
    requests share cached blocks only with requests for the same adapter (vLLM keys its blocks the same way)."""
    return None if adapter is None else zlib.crc32(b"lora:" + adapter.encode())
