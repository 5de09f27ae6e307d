"""Clients: send one streaming request and time it.  :func:`make_client` picks one from ``--target``.

``http://host:8000`` (or ``https://``) → :class:`OpenAIHTTPClient` (OpenAI API, SSE);
``grpc://host:50051`` → :class:`GrpcClient` (llm-cluster's ``Inference/Generate``).
"""

from __future__ import annotations

from typing import Any, Literal

from loadtests.clients.base import DROPPED, Client, RequestResult, StreamTimer
from loadtests.clients.grpc_api import GrpcClient
from loadtests.clients.openai_http import OpenAIHTTPClient

__all__ = ["DROPPED", "Client", "GrpcClient", "OpenAIHTTPClient", "RequestResult", "StreamTimer", "make_client"]


def make_client(
    target: str,
    *,
    api: Literal["chat", "completions"] = "chat",
    max_connections: int = 0,
    health_url: str | None = None,
    grpc_channels: int = 1,
    temperature: float | None = None,
    extra_body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Client:
    if target.startswith(("http://", "https://")):
        return OpenAIHTTPClient(
            target,
            api=api,
            max_connections=max_connections,
            health_url=health_url,
            headers=headers,
            extra_body=extra_body,
            temperature=temperature,
        )
    if target.startswith("grpc://"):
        address = target.removeprefix("grpc://").rstrip("/")
        if not address:
            raise ValueError(f"target {target!r}: expected grpc://HOST:PORT")
        return GrpcClient(address, api=api, channels=grpc_channels, temperature=temperature)
    raise ValueError(f"target {target!r}: expected http://HOST:PORT or grpc://HOST:PORT")
