"""``models[].serve_args``: `vllm serve` flags for vLLM's OpenAI layer, parsed by vLLM's own parser.

A replica serves requests through vLLM's OpenAI serving classes, built from the
same ``argparse.Namespace`` that ``vllm serve`` builds from its command line:
vLLM's parser reads the model's ``serve_args`` (keys as the flags, with
underscores: ``tool_call_parser: hermes``, ``enable_auto_tool_choice: true``),
and the engine's own arguments fill the engine part.  So a replica behaves as
``vllm serve <model> --tool-call-parser hermes --enable-auto-tool-choice``.

:func:`check_serve_args` is what the config loader calls (when vLLM is
importable): an unknown key, an engine argument (those go in ``engine_args``),
a setting of vLLM's HTTP server (the router has its own), or a value vLLM's
parser refuses is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
from typing import Any

#: Engine arguments the OpenAI layer reads as well; accepted in serve_args and
#: passed to the engine too (as ``vllm serve`` does with one flag).
SHARED_WITH_ENGINE = ("reasoning_parser", "reasoning_parser_plugin")

#: Flags of vLLM's HTTP server process, which a replica does not run.
SERVER_ONLY = frozenset(
    {
        "model_tag",
        "model",
        "config",
        "headless",
        "api_server_count",
        "grpc",
        "grpc_port",
        "host",
        "port",
        "uds",
        "api_key",
        "root_path",
        "middleware",
        "allowed_origins",
        "allowed_methods",
        "allowed_headers",
        "allow_credentials",
        "uvicorn_log_level",
        "disable_uvicorn_access_log",
        "disable_access_log_for_endpoints",
        "disable_fastapi_docs",
        "enable_ssl_refresh",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_ca_certs",
        "ssl_cert_reqs",
        "ssl_ciphers",
        "h11_max_incomplete_event_size",
        "h11_max_header_count",
    }
)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


@functools.cache
def _engine_fields() -> frozenset[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in _parser()._actions if a.option_strings}


def _argv(serve_args: dict[str, Any]) -> list[str]:
    """serve_args as `vllm serve` flags; ValueError naming a key it cannot be."""
    actions = _actions()
    engine = _engine_fields()
    argv: list[str] = []
    for key, value in serve_args.items():
        where = f"serve_args.{key}"
        if key in SERVER_ONLY:
            raise ValueError(f"{where}: is a setting of vLLM's HTTP server, which a replica does not run (see router.*)")
        if key in engine and key not in SHARED_WITH_ENGINE:
            raise ValueError(f"{where}: is a vLLM engine argument; put it in engine_args")
        action = actions.get(key)
        if action is None:
            raise ValueError(f"{where}: unknown `vllm serve` flag (keys are its flags with underscores, e.g. tool_call_parser)")
        longs = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        flag = longs[0] if longs else action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: must be true or false")
            if value:
                argv.append(flag)
            elif isinstance(action, argparse.BooleanOptionalAction):
                argv.append("--no-" + flag[2:])
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            argv += [flag, *[v if isinstance(v, str) else json.dumps(v) for v in value]]
        elif value is None:
            continue
        else:
            argv += [flag, value if isinstance(value, str) else json.dumps(value)]
    return argv


def parse_serve_args(serve_args: dict[str, Any], model: str = "model") -> argparse.Namespace:
    """`vllm serve <model> <serve_args as flags>`'s Namespace (engine part: vLLM's defaults)."""
    argv = _argv(serve_args)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _parser().parse_args(["--model", model, *argv])
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise ValueError(f"serve_args: vLLM refused them: {lines[-1] if lines else 'invalid'}") from None


def check_serve_args(serve_args: dict[str, Any]) -> None:
    """Raise ValueError naming the first serve_args key `vllm serve` would refuse."""
    if serve_args:
        args = parse_serve_args(serve_args)
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

        try:
            validate_parsed_serve_args(args)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"serve_args: {exc}") from None
        _check_parsers(args)


def _check_parsers(args: argparse.Namespace) -> None:
    """vLLM checks parser names only when the server starts; the config loader does it now."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    for key, manager in (("tool_call_parser", ToolParserManager), ("reasoning_parser", ReasoningParserManager)):
        name = getattr(args, key, None)
        known = list(manager.list_registered())
        if name and name not in known:
            raise ValueError(f"serve_args.{key}: unknown parser {name!r}; vLLM has {', '.join(known)}")


def serve_namespace(engine_args: Any, serve_args: dict[str, Any]) -> argparse.Namespace:
    """The Namespace ``vllm serve`` would build: serve_args as flags, then the engine's own arguments."""
    args = parse_serve_args(serve_args, engine_args.model)
    for name in _engine_fields():
        if hasattr(engine_args, name):
            setattr(args, name, getattr(engine_args, name))
    return args
