"""A small gRPC client for the router's public API (used by `llm-cluster chat` / `generate`)."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

from cluster.proto import inference_pb2, inference_pb2_grpc


def build_request(
    text: str,
    *,
    model: str,
    chat: bool,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    tools_json: str | None = None,
    tool_choice: str | None = None,
) -> inference_pb2.GenerateRequest:
    """A GenerateRequest; ``tools_json``: a JSON array of OpenAI tool definitions the model may call (chat),
    ``tool_choice``: none, auto, required, or a function's name."""
    req = inference_pb2.GenerateRequest(model=model, tools_json=tools_json or "", tool_choice=tool_choice or "")
    if chat:
        req.chat.messages.add(role="user", content=text)
    else:
        req.prompt = text
    if max_tokens is not None:
        req.sampling.max_tokens = max_tokens
    if temperature is not None:
        req.sampling.temperature = temperature
    if seed is not None:
        req.sampling.seed = seed
    return req


def _tool_call_text(chunk: inference_pb2.GenerateChunk, started: set[int]) -> str:
    """Tool-call deltas as the user reads them: ``[tool call] name({"arg": ...})``, one line per call."""
    out = []
    for call in chunk.tool_calls:
        if call.index not in started:
            out.append((")\n" if started else "\n") + f"[tool call] {call.name}(")
            started.add(call.index)
        out.append(call.arguments)
    return "".join(out)


async def stream_generate(
    target: str,
    text: str,
    *,
    model: str | None,
    chat: bool,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    api_key: str | None = None,
    ca_file: str | None = None,
    tools_json: str | None = None,
    tool_choice: str | None = None,
) -> int:
    """Stream one generation to stdout; returns a process exit code.

    ``api_key`` goes in ``authorization`` metadata; ``ca_file`` switches to TLS,
    trusting that CA.
    """
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    if ca_file:
        ca = Path(ca_file).read_bytes()  # noqa: ASYNC240 - once, before any call
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        try:
            if model is None:
                models = (await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10, metadata=metadata)).models
                if not models:
                    print("error: the router serves no model yet", file=sys.stderr)
                    return 1
                model = models[0].name
            req = build_request(
                text,
                model=model,
                chat=chat,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                tools_json=tools_json,
                tool_choice=tool_choice,
            )
            usage = None
            calls: set[int] = set()
            async for chunk in stub.Generate(req, metadata=metadata):
                sys.stdout.write(chunk.text + _tool_call_text(chunk, calls))
                sys.stdout.flush()
                if chunk.finish_reason or chunk.usage.prompt_tokens:
                    usage = chunk.usage
            sys.stdout.write(")\n" if calls else "\n")
            if usage is not None:
                print(f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]", file=sys.stderr)
            return 0
        except grpc.aio.AioRpcError as exc:
            print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
