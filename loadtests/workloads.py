"""Workloads: *what* each request asks (prompt or chat messages, output length, session).

A workload is a deterministic, seeded, possibly endless sequence of :class:`RequestSpec`; the runner pairs it
with send times.  Everything is decided before the request is sent (no answer feeds into a later prompt), so
a run's requests are reproducible from the seed and can be recorded into a trace and replayed exactly.

- ``synthetic``: random words, prompt and output lengths from a :class:`~loadtests.lengths.LengthDist`.
- ``sharegpt``: first user turn and first answer of each conversation in a ShareGPT JSON file, filtered as
  ``vllm bench serve`` does (vllm/benchmarks/datasets.py, ShareGPT sampling), counting words for tokens.
- ``shared-prefix``: G groups, each with its own L-token system prompt, and multi-turn sessions.  Each turn
  resends the whole conversation so far, so a prefix cache (and a session-affine router) has something to
  win.  The assistant turns resent are synthetic replies of the requested output length, not the text the
  server returned: that keeps the schedule open-loop and reproducible, and the prefix structure (system
  prompt, then earlier turns) is the same as in a real chat.  Group popularity: ``uniform`` (sessions take
  the groups in turn) or ``zipf:S`` (a new session draws group g, 0-based, with probability proportional to
  1/(g+1)^S: a few system prompts, like a few products, carry most of the traffic).
- ``trace``: the requests of a recorded or hand-written trace (see :mod:`loadtests.trace`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtests.lengths import LengthDist, count_words, synthetic_text

Message = dict[str, str]


@dataclass(slots=True)
class RequestSpec:
    """One request, independent of the API it goes out on."""

    prompt: str | None = None  # completion-style text, or
    messages: list[Message] | None = None  # chat messages
    prompt_tokens: int = 0  # estimate (words ≈ tokens); the server's usage wins when it reports one
    output_tokens: int = 128  # sent as max_tokens; the sim (no EOS) produces exactly this many
    session_id: str | None = None

    def as_text(self) -> str:
        """The prompt for the completions API / gRPC ``prompt``: messages rendered as ``role: content`` lines."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages or ())

    def as_messages(self) -> list[Message]:
        """The messages for the chat API: a bare prompt becomes one user message."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]


@dataclass(slots=True)
class Workload:
    """Base: an endless (or, for files, cycling) seeded sequence of requests."""

    seed: int = 0
    name: str = "workload"

    def requests(self) -> Iterator[RequestSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def _rng(self, *stream: int) -> np.random.Generator:
        # Independent of the arrival stream (which uses the bare seed): changing the rate keeps the requests.
        return np.random.default_rng([self.seed, 2, *stream])


@dataclass(slots=True)
class SyntheticWorkload(Workload):
    input_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", 256))
    output_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", 128))
    name: str = "synthetic"

    def requests(self) -> Iterator[RequestSpec]:
        rng = self._rng()
        while True:
            n_in = self.input_len.sample(rng)
            yield RequestSpec(prompt=synthetic_text(rng, n_in), prompt_tokens=n_in, output_tokens=self.output_len.sample(rng))

    def describe(self) -> str:
        return f"synthetic: input {self.input_len.describe()}, output {self.output_len.describe()} tokens"


def parse_group_popularity(text: str) -> float:
    """``uniform`` -> 0.0, ``zipf:S`` -> S (> 0); anything else is a ValueError naming the forms."""
    t = text.strip().lower()
    if t == "uniform":
        return 0.0
    kind, _, arg = t.partition(":")
    if kind == "zipf":
        try:
            s = float(arg)
        except ValueError:
            s = float("nan")
        if s > 0 and s != float("inf"):
            return s
    raise ValueError(f"group popularity {text!r}: expected uniform or zipf:S with S > 0 (e.g. zipf:1.2)")


@dataclass(slots=True)
class SharedPrefixWorkload(Workload):
    """G groups x L-token system prompt; sessions of T turns, S of them active at once (round robin)."""

    groups: int = 4
    system_prompt_len: int = 512
    turns: int = 3
    active_sessions: int = 8
    input_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", 64))
    output_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", 64))
    zipf_s: float = 0.0  # group popularity: 0 = uniform (groups in turn), S > 0 = Zipf with exponent S
    name: str = "shared-prefix"

    def __post_init__(self) -> None:
        for knob in ("groups", "system_prompt_len", "turns", "active_sessions"):
            if getattr(self, knob) < 1:
                raise ValueError(f"shared-prefix: {knob} must be >= 1")
        if not self.zipf_s >= 0:
            raise ValueError("shared-prefix: zipf_s must be >= 0 (0 = uniform)")

    def group_weights(self) -> np.ndarray:
        """Probability that a new session belongs to each group."""
        w = 1.0 / np.arange(1, self.groups + 1, dtype=float) ** self.zipf_s
        return w / w.sum()

    def popularity(self) -> str:
        return f"zipf:{self.zipf_s:g}" if self.zipf_s else "uniform"

    def system_prompt(self, group: int) -> str:
        return synthetic_text(self._rng(3, group), self.system_prompt_len)

    def requests(self) -> Iterator[RequestSpec]:
        rng = self._rng()
        # Groups are drawn from a stream of their own, so the uniform default keeps its old sequence.
        group_rng = self._rng(4) if self.zipf_s > 0 else None
        cdf = np.cumsum(self.group_weights())
        prompts = [self.system_prompt(g) for g in range(self.groups)]

        def new_session(idx: int) -> list:
            if group_rng is None:
                group = idx % self.groups
            else:
                group = min(int(np.searchsorted(cdf, group_rng.random(), side="right")), self.groups - 1)
            return [f"s{self.seed}-{idx}-g{group}", [{"role": "system", "content": prompts[group]}], 0]

        next_session = 0
        # Per slot: [session_id, messages so far, turns done]
        slots: list[list] = []
        for _ in range(self.active_sessions):
            slots.append(new_session(next_session))
            next_session += 1
        i = 0
        while True:
            slot = slots[i]
            sid, history, done = slot
            user = synthetic_text(rng, self.input_len.sample(rng))
            n_out = self.output_len.sample(rng)
            messages = [*history, {"role": "user", "content": user}]
            yield RequestSpec(
                messages=messages,
                prompt_tokens=sum(count_words(m["content"]) for m in messages),
                output_tokens=n_out,
                session_id=sid,
            )
            done += 1
            if done >= self.turns:
                slots[i] = new_session(next_session)
                next_session += 1
            else:
                slot[1] = [*messages, {"role": "assistant", "content": synthetic_text(rng, n_out)}]
                slot[2] = done
            i = (i + 1) % len(slots)

    def describe(self) -> str:
        return (
            f"shared-prefix: {self.groups} groups x {self.system_prompt_len}-token system prompt, "
            f"{self.turns} turns/session, {self.active_sessions} active sessions, "
            f"group popularity {self.popularity()}, turn input {self.input_len.describe()}, output {self.output_len.describe()} tokens"
        )


@dataclass(slots=True)
class ShareGPTWorkload(Workload):
    """Prompts and answer lengths from a ShareGPT-format JSON file (a list of {"conversations": [...]})."""

    path: Path = Path("sharegpt.json")
    output_len: LengthDist | None = None  # override the answer length of the dataset
    max_prompt_len: int = 1024
    max_total_len: int = 2048
    name: str = "sharegpt"
    _pairs: list[tuple[str, int]] = field(default_factory=list)

    def load(self) -> list[tuple[str, int]]:
        """(prompt, output length) pairs kept by vLLM's filter: both >= 4, prompt <= 1024, sum <= 2048."""
        if not self._pairs:
            try:
                data = json.loads(Path(self.path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"sharegpt file {self.path}: {exc}") from None
            if not isinstance(data, list):
                raise ValueError(f"sharegpt file {self.path}: expected a JSON list of conversations")
            for item in data:
                conv = item.get("conversations") or item.get("conversation") if isinstance(item, dict) else None
                if not isinstance(conv, list) or len(conv) < 2:
                    continue
                prompt, answer = (str(t.get("value", t.get("content", ""))) for t in conv[:2])
                p_len, o_len = count_words(prompt), count_words(answer)
                if p_len < 4 or o_len < 4 or p_len > self.max_prompt_len or p_len + o_len > self.max_total_len:
                    continue
                self._pairs.append((prompt, o_len))
            if not self._pairs:
                raise ValueError(f"sharegpt file {self.path}: no conversation passed the length filter")
        return self._pairs

    def requests(self) -> Iterator[RequestSpec]:
        pairs = self.load()
        rng = self._rng()
        while True:  # a shuffled pass over the file, then another
            for j in rng.permutation(len(pairs)):
                prompt, o_len = pairs[j]
                out = self.output_len.sample(rng) if self.output_len is not None else o_len
                yield RequestSpec(prompt=prompt, prompt_tokens=count_words(prompt), output_tokens=out)

    def describe(self) -> str:
        return f"sharegpt: {self.path} ({len(self.load())} conversations)"


@dataclass(slots=True)
class ListWorkload(Workload):
    """A fixed list of requests (trace replay); ends when the list does."""

    specs: list[RequestSpec] = field(default_factory=list)
    name: str = "trace"
    source: str = ""

    def requests(self) -> Iterator[RequestSpec]:
        yield from self.specs

    def describe(self) -> str:
        return f"trace: {self.source} ({len(self.specs)} requests)"
