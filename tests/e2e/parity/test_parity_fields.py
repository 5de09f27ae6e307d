"""Walk vLLM's own request models field by field: through the cluster, each field is honoured (the answer is
``vllm serve``'s for the same request) or refused with a 400 naming it; never silently dropped."""

from __future__ import annotations

from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from . import fields
from .compare import Pair, assert_same_answer
from .servers import MODEL

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHAT_BASE = {"model": MODEL, "messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 4, "temperature": 0}
COMPLETION_BASE = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}


def _walk(pair: Pair, path: str, base: dict, values: dict[str, dict[str, Any]], field: str) -> None:
    if field in fields.SKIPPED:
        pytest.skip(fields.SKIPPED[field])
    assert field in values, f"no test value for vLLM's {path} field {field!r}: add one to fields.py (or a reason to SKIPPED)"
    body = {k: v for k, v in {**base, **values[field]}.items() if v is not None}
    ref, got = pair.send("POST", path, body)
    message = str(got.error().get("message", "")) if got.status == 400 else ""
    if message and any(k in message for k in [field, *values[field]]):
        return  # refused, by name (its own, or that of a field it needs, e.g. logprobs for top_logprobs)
    assert_same_answer(ref, got)
    if field == "request_id":  # honoured: the answer's id is built from it
        assert got.body["id"] == ref.body["id"], (got.body["id"], ref.body["id"])


@pytest.mark.parametrize("field", list(ChatCompletionRequest.model_fields))
def test_each_chat_request_field_is_honoured_as_vllm_serve_does_or_refused_by_name(pair: Pair, field: str) -> None:
    _walk(pair, "/v1/chat/completions", CHAT_BASE, fields.CHAT, field)


@pytest.mark.parametrize("field", list(CompletionRequest.model_fields))
def test_each_completion_request_field_is_honoured_as_vllm_serve_does_or_refused_by_name(pair: Pair, field: str) -> None:
    _walk(pair, "/v1/completions", COMPLETION_BASE, fields.COMPLETION, field)
