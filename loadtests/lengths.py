"""Length distributions and synthetic text: how many tokens a request has, and words to fill them.

There is no tokenizer here (the load generator must not depend on the served model), so lengths are counted in
*words*, and synthetic text is made of short common English words.  The approximation "one word ≈ one token"
is exact on the sim engine (it cuts words into 4-character pieces and every word here has at most 4 letters)
and close on real BPE tokenizers, where a frequent short word with its leading space is a single token: expect
a real model to see within a few percent of the requested count.  The server's ``usage`` (prompt and
completion tokens) is what the metrics use whenever the server reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Frequent short English words (<= 4 letters), so each is one token on the sim and usually on real tokenizers.
VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        """
    time year day way man life hand part eye case week work fact home area head room book word side kind
    lot job name idea body face door car city team game line end rate plan test data code node disk file
    list page road tree rain wind snow sun moon star bird fish ship boat lake hill rock sand gold iron wood
    wall roof bed desk cup milk tea egg meal food salt rice bean corn farm shop bank card cash cost fee
    tax sale deal risk loss gain goal idea fear hope love joy care help hint note tip form size type mode
    good new old big high long real best sure free full easy hard open late last next low key top main
    fast slow warm cold dark deep near far safe rich poor kind wise bold calm fair glad keen mild neat
    make take give find tell ask feel keep let put mean seem turn show hear play run move live hold
    """.split()
    )
)


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A distribution of token counts: ``fixed:N``, ``uniform:LO,HI`` or ``lognormal:MEDIAN,SIGMA``."""

    kind: Literal["fixed", "uniform", "lognormal"]
    a: float
    b: float = 0.0
    minimum: int = 1
    maximum: int = 1 << 20

    def sample(self, rng: np.random.Generator) -> int:
        if self.kind == "fixed":
            n = self.a
        elif self.kind == "uniform":
            n = rng.integers(int(self.a), int(self.b), endpoint=True)
        else:  # exp(N(ln median, sigma)): median MEDIAN, right-skewed like real prompt lengths
            n = rng.lognormal(math.log(self.a), self.b)
        return int(min(max(round(float(n)), self.minimum), self.maximum))

    @property
    def mean(self) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a * math.exp(self.b * self.b / 2)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.a:g}"
        if self.kind == "uniform":
            return f"uniform[{self.a:g},{self.b:g}]"
        return f"lognormal(median={self.a:g},sigma={self.b:g})"


def parse_length(spec: str) -> LengthDist:
    """``256`` or ``fixed:256``, ``uniform:128,512``, ``lognormal:256,0.5`` (median, sigma of ln)."""
    kind, sep, body = spec.partition(":")
    if not sep:
        kind, body = "fixed", spec
    kind = kind.strip().lower()
    try:
        nums = [float(x) for x in body.split(",")]
    except ValueError:
        raise ValueError(f"length {spec!r}: expected numbers, e.g. 256, uniform:128,512, lognormal:256,0.5") from None
    if kind == "fixed" and len(nums) == 1 and nums[0] >= 1:
        return LengthDist("fixed", nums[0])
    if kind == "uniform" and len(nums) == 2 and 1 <= nums[0] <= nums[1]:
        return LengthDist("uniform", nums[0], nums[1])
    if kind == "lognormal" and len(nums) == 2 and nums[0] >= 1 and nums[1] >= 0:
        return LengthDist("lognormal", nums[0], nums[1])
    raise ValueError(f"length {spec!r}: use N (>= 1), uniform:LO,HI (1 <= LO <= HI) or lognormal:MEDIAN,SIGMA")


def synthetic_text(rng: np.random.Generator, n_words: int) -> str:
    """``n_words`` words drawn from :data:`VOCAB`: random, so two requests share no prefix by accident."""
    idx = rng.integers(0, len(VOCAB), n_words)
    return " ".join(VOCAB[i] for i in idx)


def count_words(text: str) -> int:
    """The token estimate used when the server reports no usage (words ≈ tokens, see the module docstring)."""
    return len(text.split())
