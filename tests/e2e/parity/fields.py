"""A non-default, valid value for every field of vLLM's ``ChatCompletionRequest`` and ``CompletionRequest``.

Each entry is the set of body fields to send on top of a cheap base request (``max_tokens`` 4, greedy); ``None``
removes a base field.  A field of vLLM's models with neither a value here nor a reason in :data:`SKIPPED` fails
the walk: a new vLLM release's new field must be decided on, not silently passed over.
"""

from __future__ import annotations

from typing import Any

PARIS, YES_ID, DOT_ID = 7042, 10539, 30
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
SAMPLED = {"temperature": 1.0, "seed": 5}
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"

#: Fields of both request models.
COMMON: dict[str, dict[str, Any]] = {
    "model": {},  # the base request always names it (vLLM's default, None, is the first served model)
    "frequency_penalty": {"frequency_penalty": 1.5},
    "logit_bias": {"logit_bias": {str(YES_ID): 60}},
    "max_tokens": {"max_tokens": 3},
    "n": {"n": 2, **SAMPLED},
    "presence_penalty": {"presence_penalty": 1.5},
    "response_format": {"response_format": {"type": "json_object"}},
    "seed": SAMPLED,
    "stop": {"stop": [" the", "."], "max_tokens": 8},
    "stream": {"stream": True},
    "stream_options": {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    "temperature": {"temperature": 0.7, "seed": 1},
    "top_p": {"top_p": 0.5, **SAMPLED},
    "user": {"user": "alice"},
    "use_beam_search": {"use_beam_search": True, "n": 2, "temperature": 0},
    "top_k": {"top_k": 3, **SAMPLED},
    "min_p": {"min_p": 0.3, **SAMPLED},
    "repetition_penalty": {"repetition_penalty": 1.4},
    "watermarking": {"watermarking": True},
    "length_penalty": {"length_penalty": 0.5, "use_beam_search": True, "n": 2, "temperature": 0},
    "stop_token_ids": {"stop_token_ids": [DOT_ID, PARIS], "max_tokens": 8},
    "include_stop_str_in_output": {"include_stop_str_in_output": True, "stop": ["."], "max_tokens": 8},
    "ignore_eos": {"ignore_eos": True, "max_tokens": 6},
    "min_tokens": {"min_tokens": 3},
    "skip_special_tokens": {"skip_special_tokens": False, "logit_bias": {"2": 30}},
    "spaces_between_special_tokens": {
        "spaces_between_special_tokens": False,
        "skip_special_tokens": False,
        "logit_bias": {"1": 10, "2": 10},
    },
    "truncate_prompt_tokens": {"truncate_prompt_tokens": 6},
    "truncation_side": {"truncation_side": "left", "truncate_prompt_tokens": 6},
    "allowed_token_ids": {"allowed_token_ids": [PARIS, YES_ID, DOT_ID]},
    "prompt_logprobs": {"prompt_logprobs": 1},
    "logprob_token_ids": {"logprob_token_ids": [PARIS, DOT_ID], "logprobs": True},
    "bad_words": {"bad_words": ["Paris", "The"]},
    "structured_outputs": {"structured_outputs": {"choice": ["yes", "no"]}},
    "priority": {"priority": 1},
    "request_id": {"request_id": "parity-walk-1"},
    "session_id": {"session_id": "session-1"},
    "return_tokens_as_token_ids": {"return_tokens_as_token_ids": True, "logprobs": True},
    "return_token_ids": {"return_token_ids": True},
    "routed_experts_prompt_start": {"routed_experts_prompt_start": 1},
    "return_token_offsets": {"return_token_offsets": True},
    "mm_payload": {"mm_payload": "none"},
    "return_mm_kwargs": {"return_mm_kwargs": True},
    "cache_salt": {"cache_salt": "tenant-a"},
    "kv_transfer_params": {"kv_transfer_params": {"do_remote_prefill": False, "do_remote_decode": False}},
    "ec_transfer_params": {"ec_transfer_params": {"do_remote_encode": False}},
    "vllm_xargs": {"vllm_xargs": {"parity_probe": 1}},
    "repetition_detection": {"repetition_detection": {"max_pattern_size": 2, "min_count": 2}, "max_tokens": 12},
    "stream_interval": {"stream": True, "stream_interval": 2, "max_tokens": 6},
    "thinking_token_budget": {"thinking_token_budget": 8},
    "add_special_tokens": {"add_special_tokens": True},
}

CHAT: dict[str, dict[str, Any]] = {
    **COMMON,
    "messages": {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of Italy?"}]},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "max_completion_tokens": {"max_completion_tokens": 3, "max_tokens": None},
    "tools": {"tools": TOOLS},
    "tool_choice": {"tools": TOOLS, "tool_choice": "required", "max_tokens": 8},
    "reasoning_effort": {"reasoning_effort": "low"},
    "include_reasoning": {"include_reasoning": False},
    "parallel_tool_calls": {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 8},
    "echo": {"echo": True},
    "add_generation_prompt": {"add_generation_prompt": False},
    "continue_final_message": {
        "messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "The capital is"}],
        "continue_final_message": True,
        "add_generation_prompt": False,
    },
    "documents": {"documents": [{"title": "Atlas", "text": "Paris is the capital of France."}]},
    "chat_template": {"chat_template": TEMPLATE},
    "chat_template_kwargs": {"chat_template_kwargs": {"enable_thinking": False}},
    "media_io_kwargs": {"media_io_kwargs": {"image": {"num_frames": 1}}},
    "mm_processor_kwargs": {"mm_processor_kwargs": {"do_resize": False}},
    "return_prompt_text": {"return_prompt_text": True},
}

COMPLETION: dict[str, dict[str, Any]] = {
    **COMMON,
    "prompt": {"prompt": [[504, 3575, 282], [2705, 28, 827]]},
    "echo": {"echo": True},
    "logprobs": {"logprobs": 2},
    "suffix": {"suffix": " and that is all."},
    "prompt_embeds": {"prompt_embeds": "AAAAAA==", "prompt": None},
    "add_special_tokens": {"add_special_tokens": False},
}

#: Fields not sent, each with why.  Empty: every field is sent, and answered as vllm serve answers it or
#: refused by name.
SKIPPED: dict[str, str] = {}
