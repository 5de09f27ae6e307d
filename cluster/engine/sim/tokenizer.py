"""The sim's text side: its chat template, its output words, and tokens <-> words.

Prompt text becomes ids with :func:`cluster.common.prefix_hash.tokenize` (shared
with the router).  Output is drawn from :data:`WORDS`: every word has at most 4
characters, so with the default ``chars_per_token`` each word is exactly one
token, and tokenizing the output gives back the emitted ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from cluster.common.chat import ChatMessage
from cluster.common.prefix_hash import tokenize

__all__ = ["WORDS", "WordCodec", "render_chat", "tokenize"]

WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "this", "are", "or", "his", "from", "at", "but", "have", "an", "they", "one", "you", "were", "her",
    "all", "she", "when", "can", "more", "some", "time", "into", "only", "new", "way", "also", "over", "then", "sun", "tree",
    "road", "blue", "rain", "city", "code", "data", "node", "fast", "slow", "cold", "warm", "wind", "star", "moon", "ship", "bird",
)  # fmt: skip


def render_chat(messages: Sequence[ChatMessage]) -> str:
    """The sim's chat template: one ``<|role|>`` header per message, then the assistant's."""
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in messages) + "<|assistant|>\n"


class WordCodec:
    """A tokenizer configuration, and the token id of each output word both ways."""

    def __init__(self, *, vocab_size: int, chars_per_token: int) -> None:
        self.vocab_size = vocab_size
        self.chars_per_token = chars_per_token
        self.word_ids = {w: self.tokenize(w)[0] for w in WORDS}
        self.id_words = {i: w for w, i in self.word_ids.items()}

    def tokenize(self, text: str) -> list[int]:
        return tokenize(text, vocab_size=self.vocab_size, chars_per_token=self.chars_per_token)

    def text_of(self, token_ids: Sequence[int]) -> str | None:
        """The words of ``token_ids`` joined by spaces; None when one of them is not an output word."""
        words = [self.id_words.get(i) for i in token_ids]
        if None in words:
            return None
        return " ".join(w for w in words if w is not None)
