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


#: Bytes per text block of the prefix keys replicas publish and routers compute (``text_keys``).
TEXT_BLOCK_BYTES = 128


def routing_text(prompt: str | None, message_contents: Sequence[str] | None) -> str:
    """The text prefix keys are computed on: the prompt, or the chat messages' contents concatenated.

    The router (``RelayRequest.routing_text``) and the replica's prefix feed
    (``cluster/replica/prefix_feed.py``) must agree on it, or no key matches.
    """
    if prompt is not None:
        return prompt
    return "".join(message_contents or ())


def _text_keys_python(text: str, block_bytes: int = TEXT_BLOCK_BYTES, max_blocks: int = 128) -> list[int]:
    """Chained keys of the full ``block_bytes`` blocks of ``text`` (UTF-8), stable across processes.

    Key i is the block index (high 32 bits) and a CRC-32 of the whole prefix up
    to block i (low 32 bits; zlib runs it on from the previous block's value,
    in C), so equal keys mean equal text up to there, but for CRC collisions
    (with a million distinct prefixes at one position, about a hundred pairs):
    a collision makes a router believe a replica holds a prefix it does not,
    which costs one cache miss, never a wrong answer.  Unlike Python's ``hash``
    of a str, the value does not depend on the process's hash seed, so a
    replica can publish the keys it holds and every router computes the same.

    This is the readable statement; :data:`text_keys` is the C one (``_prefix_keys.c``, the same values
    without a Python loop per block) where the install built it.
    """
    data = text.encode()
    n = min(len(data) // block_bytes, max_blocks)
    crc32 = zlib.crc32
    out: list[int] = []
    crc = 0
    for i in range(n):
        crc = crc32(data[i * block_bytes : (i + 1) * block_bytes], crc)
        out.append(i << 32 | crc)
    return out


try:
    from cluster.common._prefix_keys import text_keys as _text_keys_c
except ImportError:  # built without a C compiler (setup.py: optional): the Python one
    _text_keys_c = None

#: Chained keys of the full ``block_bytes`` blocks of ``text`` (see :func:`_text_keys_python`): the C one
#: where it was built, else the Python statement.
text_keys = _text_keys_c if _text_keys_c is not None else _text_keys_python
