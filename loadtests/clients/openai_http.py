"""OpenAI-compatible HTTP client: streaming SSE over aiohttp, timed per chunk.

aiohttp is used directly (not the ``openai`` package) for the same reason vLLM's benchmark does: the official
client parses every chunk into pydantic objects, which on a 2-core machine costs more CPU than the server's
own per-token work and would inflate the latencies being measured.  Requests ask for
``stream_options.include_usage`` so output lengths come from the server's usage, not from counting chunks.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import aiohttp

from loadtests.clients.base import Client, RequestResult, StreamTimer
from loadtests.workloads import RequestSpec

Api = Literal["chat", "completions"]


class OpenAIHTTPClient(Client):
    def __init__(
        self,
        base_url: str,
        *,
        api: Api = "chat",
        max_connections: int = 0,
        health_url: str | None = None,
        headers: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/v1")
        self.api = api
        self.url = f"{self.base_url}/v1/chat/completions" if api == "chat" else f"{self.base_url}/v1/completions"
        self.health_url = health_url or f"{self.base_url}/healthz"
        self.max_connections = max_connections
        self.headers = dict(headers or {})
        self.extra_body = dict(extra_body or {})
        self.temperature = temperature
        self._session: aiohttp.ClientSession | None = None
        self._probe: aiohttp.ClientSession | None = None  # its own pool: a full request pool must not delay probes
        self._health_ok = True

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, keepalive_timeout=60, force_close=False)
        # No total timeout here: the runner bounds each request (--request-timeout) and records "timeout".
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), read_bufsize=1 << 20
        )
        self._probe = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))

    async def close(self) -> None:
        for s in (self._session, self._probe):
            if s is not None:
                await s.close()
        self._session = self._probe = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("client not opened")
        return self._session

    async def models(self) -> list[str]:
        async with self.session.get(f"{self.base_url}/v1/models", headers=self.headers) as resp:
            resp.raise_for_status()
            data = await resp.json()
        return [m["id"] for m in data.get("data", [])]

    async def ready_replicas(self, model: str | None) -> int | None:
        """``ready_replicas`` from GET /healthz (llm-cluster's router); None when the target has no such field."""
        if not self._health_ok or self._probe is None:
            return None
        try:
            async with self._probe.get(self.health_url) as resp:
                if resp.status == 404:
                    self._health_ok = False  # not llm-cluster: stop asking
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError):
            return None  # a failed probe is a gap in the plot, not an error of the run
        value = data.get("ready_replicas") if isinstance(data, dict) else None
        if value is None:
            self._health_ok = False
        return value if isinstance(value, int) else None

    def body(self, spec: RequestSpec, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
        if self.api == "chat":
            body["messages"] = spec.as_messages()
            body["max_completion_tokens"] = spec.output_tokens
        else:
            body["prompt"] = spec.as_text()
            body["max_tokens"] = spec.output_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if spec.session_id:
            body["user"] = spec.session_id
        body.update(self.extra_body)
        return body

    async def send(self, spec: RequestSpec, model: str, result: RequestResult) -> None:
        headers = dict(self.headers)
        if spec.session_id:
            headers["x-session-id"] = spec.session_id
        result.session_id = spec.session_id
        result.prompt_tokens = spec.prompt_tokens
        body = self.body(spec, model)
        timer = StreamTimer(result, self.origin)
        usage: dict[str, Any] | None = None
        try:
            async with self.session.post(self.url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    result.fail(f"http_{resp.status}", text)
                    return
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank separators, SSE comments (": ping"), event: lines
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        result.fail("stream_error", json.dumps(err) if not isinstance(err, str) else err)
                        return
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    choices = chunk.get("choices")
                    if choices and _has_output(choices[0]):
                        timer.output_chunk()
                    else:
                        timer.other_chunk()
        except (TimeoutError, asyncio.CancelledError):
            raise  # the runner records timeouts and cancellations
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            result.fail("connection", f"{type(exc).__name__}: {exc}")
            return
        except (json.JSONDecodeError, ValueError, aiohttp.ClientError) as exc:
            result.fail("client_error", f"{type(exc).__name__}: {exc}")
            return
        if usage:
            result.prompt_tokens = int(usage.get("prompt_tokens") or spec.prompt_tokens)
            details = usage.get("prompt_tokens_details") or {}
            if isinstance(details, dict) and details.get("cached_tokens") is not None:
                result.cached_prompt_tokens = int(details["cached_tokens"])
        timer.finish(int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") else None)


def _has_output(choice: dict[str, Any]) -> bool:
    """A chunk carries output when it has text (chat delta content or completion text)."""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"))
    return bool(choice.get("text"))
