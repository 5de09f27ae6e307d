"""Each request kind of issue 11, sent to ``vllm serve`` and to the cluster: the cluster must answer the same.

Greedy decoding (temperature 0) unless the kind is about sampling, then a fixed seed; short outputs.  The
embedded SmolLM2-135M's chat template knows nothing of tools, so ``tool_choice: auto`` gets prose (the hermes
parser finds no call), while ``required`` and a named function are enforced by guided decoding and always give
a call: both are what a user of ``vllm serve`` gets, which is the point.
"""

from __future__ import annotations

import pytest

from . import fields
from .compare import Pair, assert_same_answer, view
from .servers import ENGINE_ARGS, MODEL

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
PROMPT = "The capital of France is"
PROMPT_IDS = [504, 3575, 282, 4649, 314]  # PROMPT, tokenized
COUNT_IDS = [2705, 28, 827, 28, 1296, 28]  # "One, two, three,"
COMMA_ID = 28
YES_ID = fields.YES_ID
TOOLS = [
    *fields.TOOLS,  # get_weather
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Local time of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
NAMED = {"type": "function", "function": {"name": "get_time"}}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
HISTORY = [
    *WEATHER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]
USAGE = {"include_usage": True}


def chat(**fields: object) -> dict:
    return {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 12, **fields}


def completion(**fields: object) -> dict:
    return {"model": MODEL, "prompt": PROMPT, "temperature": 0, "max_tokens": 8, **fields}


def tools(choice: object, stream: bool = False, **fields: object) -> dict:
    extra = {"stream": True, "stream_options": USAGE} if stream else {}
    return chat(messages=WEATHER, tools=TOOLS, tool_choice=choice, max_tokens=64, **extra, **fields)


SHORT = [{"role": "user", "content": "What is the capital of Italy? One word."}]  # greedy: 8 tokens, then EOS


def case(path: str, body: dict, *matters: str) -> tuple[str, dict, tuple[str, ...]]:
    """A request kind; ``matters``: fields without which vllm serve answers otherwise (so the kind tests them)."""
    return path, body, matters


KINDS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    "chat-plain": case(CHAT, chat()),
    "chat-stream-with-usage": case(CHAT, chat(stream=True, stream_options=USAGE)),
    "completions-string-prompt": case(COMPLETIONS, completion()),
    "completions-list-of-strings": case(COMPLETIONS, completion(prompt=[PROMPT, "One, two, three,"])),
    "completions-token-ids": case(COMPLETIONS, completion(prompt=PROMPT_IDS)),
    "completions-list-of-token-id-lists": case(COMPLETIONS, completion(prompt=[PROMPT_IDS, COUNT_IDS])),
    "completions-stream-with-usage": case(COMPLETIONS, completion(stream=True, stream_options=USAGE)),
    "completions-echo-logprobs": case(COMPLETIONS, completion(echo=True, logprobs=3, max_tokens=4), "echo", "logprobs"),
    "chat-logprobs-top-logprobs": case(CHAT, chat(logprobs=True, top_logprobs=3, max_tokens=6), "logprobs", "top_logprobs"),
    "chat-stream-logprobs": case(CHAT, chat(logprobs=True, top_logprobs=2, max_tokens=6, stream=True), "logprobs", "top_logprobs"),
    "chat-n2-seed": case(CHAT, chat(n=2, seed=7, temperature=1.0, max_tokens=8), "n"),
    "completions-n2-seed": case(COMPLETIONS, completion(n=2, seed=7, temperature=1.0), "n"),
    "penalties": case(
        CHAT,
        chat(
            messages=[{"role": "user", "content": "Say 'la' twenty times."}],
            presence_penalty=1.5,
            frequency_penalty=1.0,
            repetition_penalty=1.3,
            max_tokens=16,
        ),
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    ),
    "logit-bias": case(CHAT, chat(logit_bias={str(YES_ID): 100}, max_tokens=4), "logit_bias"),
    "min-p": case(CHAT, chat(temperature=1.5, seed=3, min_p=0.3), "min_p"),
    "min-tokens": case(CHAT, chat(messages=SHORT, min_tokens=12, max_tokens=16), "min_tokens"),
    "stop-strings": case(COMPLETIONS, completion(prompt="One, two, three,", stop=[" six", "five"], max_tokens=16), "stop"),
    "stop-token-ids": case(COMPLETIONS, completion(prompt="One, two, three,", stop_token_ids=[COMMA_ID], max_tokens=16), "stop_token_ids"),
    "ignore-eos-with-max-tokens": case(CHAT, chat(messages=SHORT, ignore_eos=True, max_tokens=14), "ignore_eos"),
    "max-completion-tokens": case(CHAT, {"model": MODEL, "messages": SHORT, "temperature": 0, "max_completion_tokens": 5}),
    "completions-default-max-tokens-16": case(COMPLETIONS, {"model": MODEL, "prompt": PROMPT, "temperature": 0}),
    "sampling-defaults-from-generation-config": case(CHAT, {"model": MODEL, "messages": QUESTION, "seed": 11, "max_tokens": 8}),
    "tools-choice-none": case(CHAT, tools("none")),
    "tools-choice-auto": case(CHAT, tools("auto")),
    "tools-choice-required": case(CHAT, tools("required"), "tool_choice"),
    "tools-choice-named-function": case(CHAT, tools(NAMED), "tool_choice"),
    "tools-choice-auto-stream": case(CHAT, tools("auto", stream=True)),
    "tools-choice-required-stream": case(CHAT, tools("required", stream=True), "tool_choice"),
    "tools-choice-named-function-stream": case(CHAT, tools(NAMED, stream=True), "tool_choice"),
    "tools-parallel-tool-calls-false": case(CHAT, tools("required", parallel_tool_calls=False), "tool_choice"),
    "history-with-tool-calls-and-tool-message": case(CHAT, chat(messages=HISTORY, tools=TOOLS, max_tokens=16)),
    "response-format-text": case(CHAT, chat(response_format={"type": "text"})),
    "response-format-json-object": case(CHAT, chat(response_format={"type": "json_object"}, max_tokens=16), "response_format"),
    "response-format-json-schema": case(
        CHAT,
        chat(response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}, max_tokens=24),
        "response_format",
    ),
    "structured-outputs-choice": case(CHAT, chat(structured_outputs={"choice": ["Paris", "Lyon", "Nice"]}), "structured_outputs"),
    "structured-outputs-regex": case(CHAT, chat(structured_outputs={"regex": "[A-Z][a-z]+, [0-9]{4}"}), "structured_outputs"),
    "structured-outputs-json": case(CHAT, chat(structured_outputs={"json": SCHEMA}, max_tokens=24), "structured_outputs"),
    "completions-structured-outputs-choice": case(
        COMPLETIONS, completion(structured_outputs={"choice": [" Lyon", " Nice"]}), "structured_outputs"
    ),
}

ERRORS: dict[str, tuple[str, dict]] = {
    "unknown-tool-choice-function": (CHAT, tools({"type": "function", "function": {"name": "get_stock_price"}})),
    "max-tokens-over-the-context": (CHAT, chat(max_tokens=ENGINE_ARGS["max_model_len"] + 1)),
    "completions-prompt-over-the-context": (COMPLETIONS, completion(prompt=[PROMPT_IDS * 250])),
    "bad-json-schema": (CHAT, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})),
    "bad-regex": (CHAT, chat(structured_outputs={"regex": "(unclosed"})),
    "top-logprobs-over-the-limit": (CHAT, chat(logprobs=True, top_logprobs=10_000)),
    "tool-choice-required-without-tools": (CHAT, chat(tool_choice="required")),
    "empty-messages": (CHAT, chat(messages=[])),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_request_kind_gets_the_answer_vllm_serve_gives(pair: Pair, kind: str) -> None:
    path, body, matters = KINDS[kind]
    ref, got = pair.send("POST", path, body)
    assert ref.status == 200, f"the reference itself refused {kind}: {ref.text[:400]}"
    assert_same_answer(ref, got)
    if matters:  # the kind really exercises its fields: without them vllm serve answers otherwise
        plain = pair.reference("POST", path, {k: v for k, v in body.items() if k not in matters})
        assert plain.status == 200 and view(plain) != view(ref), f"{kind}: {matters} change nothing in vllm serve's answer"


@pytest.mark.parametrize("kind", list(ERRORS))
def test_a_bad_request_gets_the_status_and_error_type_vllm_serve_gives(pair: Pair, kind: str) -> None:
    path, body = ERRORS[kind]
    ref, got = pair.send("POST", path, body)
    assert 400 <= ref.status < 500, f"the reference accepted {kind}: {ref.text[:300]}"
    assert_same_answer(ref, got)


def test_chat_without_max_tokens_may_use_the_rest_of_the_context(pair: Pair) -> None:
    """vLLM's chat default is max_model_len minus the prompt: a prompt 6 tokens short of the context ends by
    length after 6 tokens, on both."""
    limit = ENGINE_ARGS["max_model_len"]
    probe = {"model": MODEL, "messages": [{"role": "user", "content": "la " * 10}]}
    ref, _ = pair.send("POST", "/tokenize", probe)
    per_word = 1  # "la " is one token; the template's own tokens are the rest
    words = 10 + (limit - 6 - ref.body["count"]) // per_word
    body = {"model": MODEL, "messages": [{"role": "user", "content": "la " * words}], "temperature": 0}
    ref, got = pair.send("POST", CHAT, body)
    assert ref.status == 200, ref.text[:300]
    assert ref.body["usage"]["prompt_tokens"] + ref.body["usage"]["completion_tokens"] <= limit
    assert_same_answer(ref, got)


def test_the_model_list_names_the_model_with_its_context_root_and_parent(pair: Pair) -> None:
    """As vLLM lists it (``owned_by`` and the permission block are the server's own, not compared)."""
    ref, got = pair.send("GET", "/v1/models")
    assert ref.status == got.status == 200, got.text[:300]

    def listed(body: dict) -> list[dict]:
        return [{k: m.get(k) for k in ("id", "object", "max_model_len", "root", "parent")} for m in body["data"]]

    assert listed(got.body) == listed(ref.body)
    assert [(m["id"], m["max_model_len"]) for m in listed(got.body)] == [(MODEL, ENGINE_ARGS["max_model_len"])]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/tokenize", {"model": MODEL, "prompt": PROMPT}),
        ("/tokenize", {"model": MODEL, "prompt": PROMPT, "add_special_tokens": False, "return_token_strs": True}),
        ("/tokenize", {"model": MODEL, "messages": QUESTION}),
        ("/detokenize", {"model": MODEL, "tokens": PROMPT_IDS}),
    ],
    ids=["tokenize-prompt", "tokenize-token-strs", "tokenize-chat-messages", "detokenize"],
)
def test_tokenize_and_detokenize_answer_as_vllm_serve_does(pair: Pair, path: str, body: dict) -> None:
    ref, got = pair.send("POST", path, body)
    assert ref.status == 200, ref.text[:300]
    assert_same_answer(ref, got)
