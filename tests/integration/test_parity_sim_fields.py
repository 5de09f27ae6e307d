"""The sim engine, walked over every field of vLLM's request models: a field the sim honours shows it (a check
below), any other is refused with a 400 naming it.  Never accepted and silently ignored.

Fast: one sim replica behind a router, for the whole module.  The same non-default values as the vLLM walk
(``tests/e2e/parity/fields.py``), except where a field needs a value whose effect the sim can show.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest

from tests.conftest import SimFleet
from tests.e2e.parity import fields

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT_BASE = {"model": "sim", "messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 8, "temperature": 0}
COMPLETION_BASE = {"model": "sim", "prompt": "Tell me about the sea.", "max_tokens": 8, "temperature": 0}
#: Values that show an effect on the sim (the vLLM walk's value otherwise).
SIM_VALUES: dict[str, dict[str, Any]] = {
    "top_k": {"top_k": 1, "temperature": 1.0},  # top_k 1 is greedy: the same answer every time
    "top_p": {"top_p": 1e-9, "temperature": 1.0},  # so is a nucleus of one token
    "temperature": {"temperature": 1.0},
    "seed": {"seed": 5, "temperature": 1.0},
    "max_tokens": {"max_tokens": 3},
    "stream_options": {"stream": True, "stream_options": {"include_usage": True}},
}

Send = Callable[[dict], Any]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http():
    fleet = SimFleet()
    router = await fleet.start(1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=30) as client:
        yield client
    await fleet.stop()


def _texts(answer: dict) -> list[str]:
    return [c["message"]["content"] if "message" in c else c["text"] for c in answer["choices"]]


async def _post(http: httpx.AsyncClient, path: str, body: dict) -> tuple[int, Any]:
    body = {k: v for k, v in body.items() if v is not None}
    if body.get("stream"):
        async with http.stream("POST", path, json=body) as resp:
            if resp.status_code != 200:
                return resp.status_code, json.loads(await resp.aread())
            lines = [line[5:].strip() async for line in resp.aiter_lines() if line.startswith("data:")]
            return 200, [json.loads(x) for x in lines if x != "[DONE]"]
    resp = await http.post(path, json=body)
    return resp.status_code, resp.json()


# Each check gets the answer and a way to send more requests (base + the field's value + extra fields);
# it returns an error message, or None when the field visibly did what it asks.
async def _greedy_again(ans: Any, send: Send) -> str | None:
    again = [await send({}) for _ in range(2)]
    return None if all(_texts(a) == _texts(ans) for a in again) else "sampling with it is not deterministic"


async def _seeded(ans: Any, send: Send) -> str | None:
    same, other = await send({}), await send({"seed": 6})
    if _texts(same) != _texts(ans):
        return "the same seed gave another answer"
    return None if _texts(other) != _texts(ans) else "another seed gave the same answer"


async def _temperature(ans: Any, send: Send) -> str | None:
    greedy = await send({"temperature": 0})
    return None if _texts(greedy) != _texts(ans) else "temperature 1 answers as temperature 0 does"


async def _at_most_3(ans: Any, send: Send) -> str | None:
    return None if ans["usage"]["completion_tokens"] <= 3 else f"{ans['usage']['completion_tokens']} tokens"


async def _stopped(ans: Any, send: Send) -> str | None:
    text = _texts(ans)[0]
    return None if " the" not in text and "." not in text else f"stop strings in {text!r}"


async def _streamed(ans: Any, send: Send) -> str | None:
    return None if isinstance(ans, list) and len(ans) > 1 else "not a stream of chunks"


async def _usage_chunk(ans: Any, send: Send) -> str | None:
    return None if isinstance(ans, list) and ans[-1].get("usage") else "no usage chunk"


async def _named_id(ans: Any, send: Send) -> str | None:
    return None if ans["id"].endswith("parity-walk-1") else f"id {ans['id']}"


async def _served(ans: Any, send: Send) -> str | None:
    return None if ans["model"] == "sim" and _texts(ans)[0] else "no answer from the named model"


async def _metadata(ans: Any, send: Send) -> str | None:
    return None  # `user`: an opaque tag for the operator's logs; vLLM's engine does nothing with it either


CHECKS: dict[str, Callable[[Any, Send], Any]] = {
    "model": _served,
    "messages": _served,
    "prompt": _served,
    "max_tokens": _at_most_3,
    "max_completion_tokens": _at_most_3,
    "temperature": _temperature,
    "seed": _seeded,
    "top_k": _greedy_again,
    "top_p": _greedy_again,
    "stop": _stopped,
    "stream": _streamed,
    "stream_options": _usage_chunk,
    "request_id": _named_id,
    "user": _metadata,
}


async def _walk(http: httpx.AsyncClient, path: str, base: dict, values: dict[str, dict], field: str) -> None:
    if field in fields.SKIPPED:
        pytest.skip(fields.SKIPPED[field])
    value = SIM_VALUES.get(field, values.get(field))
    assert value is not None, f"no test value for {field!r}"

    async def send(extra: dict) -> Any:
        status, ans = await _post(http, path, {**base, **value, **extra})
        assert status == 200, (status, ans)
        return ans

    status, ans = await _post(http, path, {**base, **value})
    if status == 400:
        message = ans["error"]["message"]
        # top_logprobs needs logprobs, so the sim may name logprobs (itself walked, and refused, on its own)
        assert any(k in message for k in [field, *value]), f"refused, but the message does not name {field!r}: {message}"
        return
    assert status == 200, (status, ans)
    check = CHECKS.get(field)
    assert check is not None, f"the sim accepted {field}={value} but cannot show it honoured it: it must refuse it by name"
    problem = await check(ans, send)
    assert problem is None, f"the sim accepted {field}={value} and ignored it: {problem}"


@pytest.mark.parametrize("field", list(ChatCompletionRequest.model_fields))
async def test_the_sim_honours_each_chat_field_or_refuses_it_by_name(http: httpx.AsyncClient, field: str) -> None:
    await _walk(http, "/v1/chat/completions", CHAT_BASE, fields.CHAT, field)


@pytest.mark.parametrize("field", list(CompletionRequest.model_fields))
async def test_the_sim_honours_each_completion_field_or_refuses_it_by_name(http: httpx.AsyncClient, field: str) -> None:
    await _walk(http, "/v1/completions", COMPLETION_BASE, fields.COMPLETION, field)
