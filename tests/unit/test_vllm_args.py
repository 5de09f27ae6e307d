"""models[].serve_args and default_sampling: checked by vLLM's own parser, passed as `vllm serve` would pass them."""

import pytest

pytest.importorskip("vllm")

from cluster.config import ConfigError, load_config
from cluster.engine.vllm_args import parse_serve_args
from cluster.engine.vllm_backend import merge_engine_args


def test_serve_args_become_the_namespace_vllm_serve_builds_from_the_same_flags():
    args = parse_serve_args({"tool_call_parser": "hermes", "enable_auto_tool_choice": True, "response_role": "bot"}, "/m")
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.response_role, args.model) == ("hermes", True, "bot", "/m")
    assert parse_serve_args({"enable_auto_tool_choice": False}).enable_auto_tool_choice is False


@pytest.mark.parametrize(
    ("serve_args", "named"),
    [
        ({"tool_parser": "hermes"}, "serve_args.tool_parser"),  # not a vllm serve flag
        ({"max_model_len": 512}, "serve_args.max_model_len"),  # an engine argument: engine_args
        ({"port": 8001}, "serve_args.port"),  # vLLM's HTTP server, which a replica does not run
        ({"tool_call_parser": "no-such-parser"}, "serve_args.tool_call_parser"),
        ({"enable_auto_tool_choice": True}, "--tool-call-parser"),  # vLLM's own check
        ({"chat_template_content_format": "bogus"}, "chat-template-content-format"),
    ],
)
def test_a_serve_arg_vllm_would_refuse_fails_the_config_naming_it(serve_args, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [f"models.0.serve_args={serve_args}"])


def test_serve_args_on_a_sim_model_are_refused():
    with pytest.raises(ConfigError, match="only the vllm engine"):
        load_config(None, ["models.0.engine=sim", "models.0.serve_args={tool_call_parser: hermes}"])


def test_default_sampling_becomes_vllms_override_generation_config_and_the_reasoning_parser_reaches_the_engine():
    merged = merge_engine_args(
        {"max_model_len": 512, "override_generation_config": {"top_k": 5, "temperature": 1.0}},
        {"reasoning_parser": "deepseek_r1", "tool_call_parser": "hermes"},
        {"temperature": 0.2, "top_p": 0.9},
    )
    assert merged == {
        "max_model_len": 512,
        "override_generation_config": {"top_k": 5, "temperature": 0.2, "top_p": 0.9},
        "reasoning_parser": "deepseek_r1",
    }
