"""The official ``openai`` client, as an application uses it: a tool-calling loop and a pydantic-parsed
structured answer, against the cluster, and the same calls against ``vllm serve`` to show the two agree."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest

from . import fields
from .compare import Pair
from .servers import MODEL

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

WEATHER_TOOL = fields.TOOLS[0]


class City(pydantic.BaseModel):
    name: str
    country: str


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def get_weather(arguments: str) -> str:
    """The application's tool: it gets the model's arguments, as JSON text."""
    args = json.loads(arguments)
    city = args.get("city") if isinstance(args, dict) else args
    return json.dumps({"city": city, "sky": "sunny", "celsius": 21})


def tool_loop(c: openai.OpenAI) -> tuple[str, str, str, str]:
    """Call → run the tool the model asked for → send its result → the model's final answer.  The small model's
    chat template has no tool section, so the call is forced by naming the function (guided decoding)."""
    messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=64,
    )
    msg = first.choices[0].message
    assert msg.tool_calls, f"no tool call: {msg}"
    call = msg.tool_calls[0]
    messages.append(msg.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": get_weather(call.function.arguments)})
    final = c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=24)
    answer = final.choices[0]
    assert not answer.message.tool_calls and answer.message.content, answer
    return call.function.name, call.function.arguments, answer.message.content, answer.finish_reason


def test_an_openai_client_tool_loop_runs_through_the_cluster_as_through_vllm_serve(pair: Pair) -> None:
    got = tool_loop(client(pair.cluster_url))
    assert got[0] == "get_weather"
    assert got == tool_loop(client(pair.ref_url))


def test_the_openai_clients_parse_returns_a_pydantic_object_from_the_cluster_as_from_vllm_serve(pair: Pair) -> None:
    def parse(c: openai.OpenAI) -> City:
        resp = c.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Name a famous city and its country, as JSON."}],
            response_format=City,
            temperature=0,
            max_tokens=60,
        )
        assert resp.choices[0].finish_reason == "stop", resp
        parsed = resp.choices[0].message.parsed
        assert isinstance(parsed, City), resp
        return parsed

    assert parse(client(pair.cluster_url)) == parse(client(pair.ref_url))
