"""Client for the project's gRPC API (``llm_cluster.v1.Inference/Generate``, server streaming).

Requests are built with :func:`cluster.client.build_request` (the same helper ``llm-cluster chat`` uses) so the
load test speaks the API exactly as the project's own client does; multi-message chats replace its single user
message.  The session id travels as ``x-session-id`` metadata, which the router reads for session affinity.
The replica count for the timeline comes from ``ListModels`` (``ready_replicas`` per model).

Several channels can be opened (``--grpc-channels``): one HTTP/2 connection multiplexes every stream, and at
high rates a single connection's flow control and the client's one event loop, not the server, become the
bottleneck.  Each channel gets its own subchannel pool so they really are separate connections.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Literal

import grpc

from cluster.client import build_request
from cluster.proto import inference_pb2, inference_pb2_grpc
from loadtests.clients.base import Client, RequestResult, StreamTimer
from loadtests.workloads import RequestSpec

SESSION_METADATA_KEY = "x-session-id"


class GrpcClient(Client):
    def __init__(
        self, address: str, *, api: Literal["chat", "completions"] = "chat", channels: int = 1, temperature: float | None = None
    ) -> None:
        self.address = address
        self.api = api
        self.n_channels = max(1, channels)
        self.temperature = temperature
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[inference_pb2_grpc.InferenceStub] = []
        self._next = itertools.count()

    async def open(self) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
        self._channels = [grpc.aio.insecure_channel(self.address, options=opts) for _ in range(self.n_channels)]
        self._stubs = [inference_pb2_grpc.InferenceStub(c) for c in self._channels]

    async def close(self) -> None:
        for c in self._channels:
            await c.close()
        self._channels, self._stubs = [], []

    def _stub(self) -> inference_pb2_grpc.InferenceStub:
        if not self._stubs:
            raise RuntimeError("client not opened")
        return self._stubs[next(self._next) % len(self._stubs)]

    async def models(self) -> list[str]:
        resp = await self._stub().ListModels(inference_pb2.ListModelsRequest(), timeout=10)
        return [m.name for m in resp.models]

    async def ready_replicas(self, model: str | None) -> int | None:
        try:
            resp = await self._stub().ListModels(inference_pb2.ListModelsRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return None
        return sum(m.ready_replicas for m in resp.models if model is None or m.name == model)

    def request(self, spec: RequestSpec, model: str) -> inference_pb2.GenerateRequest:
        chat = self.api == "chat"
        text = spec.as_text() if not chat or spec.messages is None else ""
        req = build_request(text, model=model, chat=chat, max_tokens=spec.output_tokens, temperature=self.temperature)
        if chat and spec.messages is not None:
            del req.chat.messages[:]
            for m in spec.messages:
                req.chat.messages.add(role=m["role"], content=m["content"])
        return req

    async def send(self, spec: RequestSpec, model: str, result: RequestResult) -> None:
        result.session_id = spec.session_id
        result.prompt_tokens = spec.prompt_tokens
        req = self.request(spec, model)
        metadata = ((SESSION_METADATA_KEY, spec.session_id),) if spec.session_id else None
        timer = StreamTimer(result, self.origin)
        usage: inference_pb2.Usage | None = None
        call = self._stub().Generate(req, metadata=metadata)
        try:
            async for chunk in call:
                if chunk.text or chunk.token_ids:
                    timer.output_chunk()
                else:
                    timer.other_chunk()
                if chunk.finish_reason:
                    usage = chunk.usage
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            result.fail(f"grpc_{exc.code().name}", exc.details() or "")
            return
        if usage is not None:
            result.prompt_tokens = usage.prompt_tokens or spec.prompt_tokens
            result.cached_prompt_tokens = usage.cached_prompt_tokens
        timer.finish(usage.completion_tokens if usage is not None and usage.completion_tokens else None)
