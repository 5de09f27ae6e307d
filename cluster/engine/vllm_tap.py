"""What the replica needs to see of vLLM's engine outputs, and resumed requests.

vLLM's OpenAI serving classes call ``engine_client.generate(...)`` and turn the
``RequestOutput`` stream into SSE strings or a response model.  The replica
hands them :class:`TappedClient`, a thin proxy over the real ``AsyncLLM``:

- it shows each output to the request's :class:`Tap` (found through a
  contextvar the replica sets around the serving call), so the replica knows the
  token ids and text behind each SSE string it forwards, the finish reason and
  usage, without parsing what vLLM wrote;
- for a resumed request (migration: ``Tap.resume``) it appends the resumed
  token ids to the prompt the serving layer rendered, lowers ``max_tokens``
  (and ``min_tokens``) by their count, and prepends to the first output's text
  the part of the resumed tokens' text the client never received (an engine
  holds back text that could begin a stop string).

Everything else is delegated to ``AsyncLLM`` unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from vllm.outputs import RequestOutput

from cluster.engine.base import Resume

log = logging.getLogger(__name__)

#: How often a non-streamed request tells the router it is still being generated
#: (the router's stall timeout is tens of seconds; the first output is told at once).
PROGRESS_INTERVAL_S = 1.0

_TAP: contextvars.ContextVar[Tap | None] = contextvars.ContextVar("llm_cluster_vllm_tap", default=None)


@dataclass(slots=True)
class Tap:
    """One request's view of the outputs the serving layer consumed."""

    resume: Resume | None = None
    #: Since the last :meth:`take`: generated token ids and their text (choice 0).
    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0  # the original prompt (resumed tokens excluded)
    generated: int = 0  # by this engine, resumed tokens excluded
    cached_prompt_tokens: int = 0
    #: Set at the first output and then at most every PROGRESS_INTERVAL_S (a non-streamed request's progress).
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    _noted: float = 0.0

    @property
    def resumed(self) -> int:
        return len(self.resume.token_ids) if self.resume is not None else 0

    @property
    def completion_tokens(self) -> int:
        return self.generated + self.resumed

    def take(self) -> tuple[list[int], str]:
        ids, text = self.token_ids, "".join(self.text)
        self.token_ids, self.text = [], []
        return ids, text

    def observe(self, out: RequestOutput) -> None:
        completions = out.outputs
        if completions:
            first = completions[0]
            self.token_ids.extend(first.token_ids)
            self.text.append(first.text)
            self.generated += sum(len(c.token_ids) for c in completions)
            if out.finished:
                self.finish_reason = str(first.finish_reason or "abort")
        elif out.finished:
            self.finish_reason = "abort"
        if out.prompt_token_ids is not None:
            self.prompt_tokens = len(out.prompt_token_ids) - self.resumed
        self.cached_prompt_tokens = min(out.num_cached_tokens or 0, self.prompt_tokens)
        now = time.monotonic()
        if now - self._noted >= PROGRESS_INTERVAL_S:
            self._noted = now
            self.progress.set()


def set_tap(tap: Tap) -> contextvars.Token[Tap | None]:
    return _TAP.set(tap)


def reset_tap(token: contextvars.Token[Tap | None]) -> None:
    _TAP.reset(token)


class TappedClient:
    """``AsyncLLM`` as vLLM's serving classes see it, with the tap and resume above."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kwargs: Any) -> AsyncGenerator[RequestOutput, None]:
        # The tap is read now, in the serving call's context: the stream is
        # iterated later, from wherever the replica consumes the SSE strings.
        tap = _TAP.get()
        pending = ""
        if tap is not None and tap.resume is not None and tap.resume.token_ids:
            prompt, sampling_params, pending = self._resumed(prompt, sampling_params, tap.resume)
        return self._tapped(self._llm.generate(prompt, sampling_params, request_id, **kwargs), tap, pending)

    @staticmethod
    async def _tapped(stream: AsyncGenerator[RequestOutput, None], tap: Tap | None, pending: str) -> AsyncGenerator[RequestOutput, None]:
        try:
            async for out in stream:
                if pending and out.outputs:
                    out.outputs[0].text = pending + out.outputs[0].text
                    pending = ""
                if tap is not None:
                    tap.observe(out)
                yield out
        finally:
            await stream.aclose()

    def _resumed(self, prompt: Any, params: Any, resume: Resume) -> tuple[Any, Any, str]:
        """The prompt with the resumed tokens appended, the lowered budget, and the text still owed."""
        ids = list(prompt["prompt_token_ids"])
        prompt = {k: v for k, v in prompt.items() if k != "prompt_token_offsets"}
        prompt["prompt_token_ids"] = ids + list(resume.token_ids)
        params = params.clone()
        n = len(resume.token_ids)
        if params.max_tokens is not None:
            # The serving layer sized max_tokens for the original prompt; the
            # context still fits.  At least one token: the router resumes only
            # streams that had not finished.
            params.max_tokens = max(params.max_tokens - n, 1)
        if params.min_tokens:
            params.min_tokens = max(params.min_tokens - n, 0)
        return prompt, params, self._unsent_text(ids, list(resume.token_ids), resume.text)

    def _unsent_text(self, prompt_ids: list[int], resume_ids: list[int], sent: str) -> str:
        """The detokenized resumed tokens past what the client received (``sent``).

        They are decoded after a few prompt tokens, so the first one gets the
        spacing it had when it was generated.  A stop string that began in this
        held-back text and ends in new text is not caught: vLLM matches stop
        strings in its own output only.
        """
        tokenizer = self._llm.get_tokenizer()
        tail = prompt_ids[-8:]
        base = tokenizer.decode(tail, skip_special_tokens=True)
        full = tokenizer.decode(tail + resume_ids, skip_special_tokens=True)
        full = full[len(base) :] if full.startswith(base) else tokenizer.decode(resume_ids, skip_special_tokens=True)
        if not full.startswith(sent):
            log.warning("resumed text does not match the resumed tokens; sending nothing extra")
            return ""
        return full[len(sent) :]
