"""A replica's OpenAI API: vLLM's own serving classes over the replica's ``AsyncLLM``.

:class:`VllmOpenAI` builds what ``vllm serve`` builds (``init_app_state`` with
the Namespace of :mod:`vllm_args`) and answers one :class:`OpenAICall` the way
vLLM's FastAPI routes do: the body is validated into vLLM's pydantic request
(its validation error is a 400 with vLLM's message), the serving class is
called with no HTTP request object, and what it returns is written out as
vLLM's server writes it (SSE strings, a response model's JSON, or an
``ErrorResponse`` whose code is the status; an exception is mapped by vLLM's
own ``create_error_response``).

Each SSE string is forwarded as one :class:`Chunk` together with what the tap
(:mod:`vllm_tap`) saw the serving layer consume for it: token ids and text,
finish reason, usage.  Exceptions to one string per chunk: a chat stream's
role chunk goes out with the first content (the tokens behind both arrive
together), and whatever follows the finishing output (usage chunk,
``[DONE]``) goes out with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import State
from starlette.responses import JSONResponse, Response
from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest

from cluster.engine.base import CHAT, COMPLETIONS, DETOKENIZE, EMBEDDINGS, TOKENIZE, Chunk, EngineRequestError, OpenAICall, error_chunk
from cluster.engine.vllm_args import serve_namespace
from cluster.engine.vllm_tap import Tap, TappedClient, reset_tap, set_tap

log = logging.getLogger(__name__)

_REQUESTS: dict[str, Any] = {
    CHAT: ChatCompletionRequest,
    COMPLETIONS: CompletionRequest,
    TOKENIZE: TypeAdapter(TokenizeRequest),
    DETOKENIZE: DetokenizeRequest,
    EMBEDDINGS: TypeAdapter(EmbeddingRequest),
}


def _json(model: Any) -> bytes:
    """A response model's bytes, exactly as vLLM's routes write them (starlette's JSONResponse)."""
    return bytes(JSONResponse(content=model.model_dump()).body)


def _error(exc: BaseException | ErrorResponse) -> Chunk:
    err = exc if isinstance(exc, ErrorResponse) else create_error_response(exc)  # type: ignore[arg-type]
    return Chunk(data=_json(err), status=err.error.code, resumable=False)


async def _validation_error(exc: ValidationError) -> Chunk:
    """The 400 vLLM's FastAPI app answers for a body its pydantic model refuses."""
    from types import SimpleNamespace

    from fastapi.exceptions import RequestValidationError
    from vllm.entrypoints.serve.exception_handling.handlers.validation import validation_exception_handler

    errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
    fake = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(args=SimpleNamespace(log_error_stack=False))), state=None)
    resp = await validation_exception_handler(fake, RequestValidationError(errors))  # type: ignore[arg-type]
    return Chunk(data=bytes(resp.body), status=resp.status_code, resumable=False)


def _resumable(req: Any, state: State) -> bool:
    """Whether a failure mid-stream can be resumed exactly on another replica (see docs/architecture.md)."""
    if getattr(req, "n", 1) not in (1, None) or getattr(req, "use_beam_search", False) or getattr(req, "echo", False):
        return False
    if getattr(req, "prompt_logprobs", None) or getattr(req, "presence_penalty", 0) or getattr(req, "frequency_penalty", 0):
        return False
    if getattr(req, "structured_outputs", None) is not None:
        return False
    rf = getattr(req, "response_format", None)
    if rf is not None and getattr(rf, "type", "text") != "text":
        return False
    if getattr(req, "tools", None) and getattr(req, "tool_choice", None) != "none":
        return False  # a tool parser reads the whole answer
    args = state.args
    return not (args.structured_outputs_config.reasoning_parser or getattr(args, "reasoning_parser", None))


class VllmOpenAI:
    """vLLM's OpenAI serving state for one engine; :meth:`serve` answers one call."""

    def __init__(self, state: State) -> None:
        self.state = state

    @classmethod
    async def create(cls, llm: Any, engine_args: Any, serve_args: dict[str, Any]) -> VllmOpenAI:
        args = serve_namespace(engine_args, serve_args)
        state = State()
        tasks = await llm.get_supported_tasks()
        await init_app_state(TappedClient(llm), state, args, tasks)
        return cls(state)

    def close(self) -> None:
        """Drop the serving classes (they hold the engine client), so the AsyncLLM goes with the engine's own reference."""
        self.state._state.clear()

    def _handler(self, endpoint: str) -> Any:
        s = self.state
        return {
            CHAT: getattr(s, "openai_serving_chat", None) and s.openai_serving_chat.create_chat_completion,
            COMPLETIONS: getattr(s, "openai_serving_completion", None) and s.openai_serving_completion.create_completion,
            TOKENIZE: s.serving_tokenization.create_tokenize,
            DETOKENIZE: s.serving_tokenization.create_detokenize,
            EMBEDDINGS: getattr(s, "serving_embedding", None),
        }.get(endpoint)

    # -- LoRA adapters, through vLLM's own model registry (what /v1/load_lora_adapter calls) --
    async def load_adapter(self, name: str, path: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        res = await self.state.openai_serving_models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=path))
        if isinstance(res, ErrorResponse):
            raise EngineRequestError(res.error.message)

    async def unload_adapter(self, name: str) -> bool:
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        res = await self.state.openai_serving_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
        return not isinstance(res, ErrorResponse)

    def adapters(self) -> tuple[str, ...]:
        return tuple(getattr(self.state.openai_serving_models, "lora_requests", {}) or ())

    async def serve(self, call: OpenAICall) -> AsyncIterator[Chunk]:
        model = _REQUESTS.get(call.endpoint)
        handler = self._handler(call.endpoint)
        if model is None or handler is None:
            if call.endpoint in (CHAT, COMPLETIONS) and getattr(self.state, "serving_embedding", None) is not None:
                msg = f"model {call.body.get('model')!r} is an embedding model: it serves POST /v1/embeddings, not {call.endpoint}"
                yield error_chunk(msg, 400, "BadRequestError", "model")
            else:
                yield error_chunk(f"this model does not serve the {call.endpoint} endpoint", 404, "NotFoundError")
            return
        try:
            req = model.validate_python(call.body) if isinstance(model, TypeAdapter) else model.model_validate(call.body)
        except ValidationError as exc:
            yield await _validation_error(exc)
            return
        except Exception as exc:  # a model validator's own error (VLLMValidationError...): mapped as vLLM's app maps it
            yield _error(exc)
            return
        tap = Tap(resume=call.resume)
        token = set_tap(tap)
        try:
            task = asyncio.ensure_future(handler(req, None))  # the task copies the context: it sees the tap
        finally:
            reset_tap(token)
        try:
            async for note in _progress(task, tap):
                yield note
            result = task.result()
        except Exception as exc:  # vLLM's app maps these by type (4xx for the request's faults)
            yield _error(exc)
            return
        finally:
            if not task.done():
                task.cancel()
        if isinstance(result, ErrorResponse):
            yield _error(result)
        elif isinstance(result, Response):  # the pooling layer answers with a response (embeddings)
            yield _response_chunk(result)
        elif isinstance(result, AsyncGenerator):
            async for chunk in self._stream(result, tap, call.endpoint == CHAT, _resumable(req, self.state)):
                yield chunk
        else:
            yield Chunk(
                data=_json(result),
                status=200,
                finish_reason=tap.finish_reason,
                prompt_tokens=tap.prompt_tokens,
                completion_tokens=tap.completion_tokens,
                cached_prompt_tokens=tap.cached_prompt_tokens,
                resumable=False,
            )

    async def _stream(self, gen: AsyncGenerator[str, None], tap: Tap, chat: bool, resumable: bool) -> AsyncIterator[Chunk]:
        held = b""
        first = True
        status = 200
        try:
            async for s in gen:
                data = s.encode()
                if first and chat:
                    first = False
                    if tap.resume is None:  # a resumed stream's role chunk was sent by the earlier replica
                        held = data
                    continue
                ids, text = tap.take()
                chunk = Chunk(data=held + data, status=status, token_ids=ids, text=text, resumable=resumable)
                chunk.tool_call = b'"tool_calls"' in data
                held, status = b"", 0
                if tap.finish_reason is not None:
                    rest = [r async for r in gen]
                    chunk.data += "".join(rest).encode()
                    if tap.resumed:
                        chunk.data = _whole_request_usage(chunk.data, tap.resumed)
                    chunk.finish_reason = tap.finish_reason
                    chunk.prompt_tokens = tap.prompt_tokens
                    chunk.completion_tokens = tap.completion_tokens
                    chunk.cached_prompt_tokens = tap.cached_prompt_tokens
                yield chunk
            if held:
                yield Chunk(data=held, status=status, resumable=False)
        finally:
            await gen.aclose()


def _response_chunk(resp: Response) -> Chunk:
    """A starlette response's bytes (vLLM's pooling routes), with the prompt tokens of its usage."""
    body = getattr(resp, "body", None)
    if body is None:  # a StreamingResponse: encoding_format "bytes"
        msg = "encoding_format 'bytes' is not served through the cluster: use 'float' or 'base64'"
        return error_chunk(msg, 400, param="encoding_format")
    prompt_tokens = 0
    if resp.status_code < 300:
        usage = json.loads(body).get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
    return Chunk(data=bytes(body), status=resp.status_code, prompt_tokens=prompt_tokens, resumable=False, finish_reason="stop")


async def _progress(task: asyncio.Future[Any], tap: Tap) -> AsyncIterator[Chunk]:
    """Empty chunks while a non-streamed answer is being generated (the router's first-token and stall timers)."""
    while not task.done():
        waiter = asyncio.ensure_future(tap.progress.wait())
        try:
            await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if tap.progress.is_set() and not task.done():
            tap.progress.clear()
            yield Chunk(data=b"")


def _whole_request_usage(data: bytes, resumed: int) -> bytes:
    """A resumed stream's usage events counted for the whole request (resumed tokens are completion)."""
    if b'"usage":{' not in data:
        return data
    out = []
    for event in data.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"usage":{' in event:
            obj = json.loads(event[6:])
            usage = obj.get("usage")
            if usage:
                usage["prompt_tokens"] = max(usage["prompt_tokens"] - resumed, 0)
                usage["completion_tokens"] += resumed
                details = usage.get("prompt_tokens_details")
                if details and details.get("cached_tokens") is not None:
                    details["cached_tokens"] = min(details["cached_tokens"], usage["prompt_tokens"])
            event = b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        out.append(event)
    return b"\n\n".join(out)
