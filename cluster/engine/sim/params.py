"""The sim engine's knobs (:class:`SimParams`); the module docstring of :mod:`cluster.engine.sim` explains the fit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cluster.common.prefix_hash import DEFAULT_BLOCK_SIZE, DEFAULT_CHARS_PER_TOKEN, DEFAULT_VOCAB_SIZE

_POSITIVE_KNOBS = (
    "block_size",
    "kv_capacity_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "vocab_size",
    "chars_per_token",
)
_NON_NEGATIVE_KNOBS = (
    "prefill_base_ms",
    "prefill_ms_per_token",
    "decode_base_ms",
    "decode_ms_per_seq",
    "time_scale",
    "lora_load_ms",
    "lora_disk_load_ms",
)


@dataclass(slots=True)
class SimParams:
    """Knobs of the simulated engine.  Times are milliseconds of engine time, before ``time_scale``."""

    # Latency model; see the package docstring for the fit.
    prefill_base_ms: float = 95.0
    prefill_ms_per_token: float = 0.66
    decode_base_ms: float = 34.6
    decode_ms_per_seq: float = 0.1
    # KV cache and scheduler (vLLM's names and meanings).
    block_size: int = DEFAULT_BLOCK_SIZE
    kv_capacity_blocks: int = 11_650
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    max_model_len: int = 2048
    # LoRA (with the model's ``lora`` config): putting an adapter into an active slot, from the CPU
    # cache (copying its weights into the slot) and, on top, from disk (reading the adapter directory).
    lora_load_ms: float = 5.0
    lora_disk_load_ms: float = 50.0
    # Tokenizer.
    vocab_size: int = DEFAULT_VOCAB_SIZE
    chars_per_token: int = DEFAULT_CHARS_PER_TOKEN
    # Determinism and speed.
    seed: int = 0
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), type(f.default)))
        for name in _POSITIVE_KNOBS:
            if getattr(self, name) < 1:
                raise ValueError(f"SimParams.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in _NON_NEGATIVE_KNOBS:
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"SimParams.{name} must be >= 0, got {getattr(self, name)!r}")
        # Like vLLM's startup check: one request must be able to reach
        # max_model_len alone, or it would preempt itself forever.
        if self.kv_capacity_blocks * self.block_size < self.max_model_len:
            raise ValueError(
                f"SimParams.kv_capacity_blocks={self.kv_capacity_blocks} holds {self.kv_capacity_blocks * self.block_size} tokens, "
                f"less than max_model_len={self.max_model_len}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimParams:
        """Build from a config mapping; ValueError names any unknown key or bad value."""
        if not isinstance(d, Mapping):
            raise ValueError(f"SimParams must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown SimParams key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def prefill_ms(self, uncached_tokens: int) -> float:
        """Engine time to prefill one request with this many uncached tokens."""
        return self.prefill_base_ms + self.prefill_ms_per_token * uncached_tokens

    def step_ms(self, batch: int) -> float:
        """Engine time of one decode step over ``batch`` running requests."""
        return self.decode_base_ms + self.decode_ms_per_seq * batch


def _checked(name: str, value: Any, kind: type) -> Any:
    # bool is an int subclass; True as a block size is a config mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"SimParams.{name} must be a number, got {value!r}")
    if kind is int:
        if not isinstance(value, int):
            raise ValueError(f"SimParams.{name} must be an integer, got {value!r}")
        return value
    return float(value)
