"""A replica that costs next to nothing: both ``replica.proto`` (for our router) and OpenAI SSE (for gateways).

    python -m loadtests.bench.null_backend [--grpc-port 0] [--http-port 0]

Prints ``null backend grpc 127.0.0.1:P http http://127.0.0.1:Q`` once serving; it
serves the relay stream too (its port in ``Health``, as a replica's).
Every request streams ``max_tokens`` one-token chunks, pre-encoded, back to
back or ``--token-interval-ms`` apart (an engine step: then every token is
its own network write, as with a real engine), then the finish chunk with
usage: no model, no tokenizer, so what a benchmark measures in front of it is
the router's own work.  ``Replica/StreamLoad`` (and the relay port's load stream) report an idle replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import grpc
from aiohttp import web

from cluster.proto import inference_pb2, replica_pb2, replica_pb2_grpc
from cluster.replica.relay import RelayServer
from cluster.router.app import run_loop

MODEL = "smollm2-135m-instruct"


class NullReplica(replica_pb2_grpc.ReplicaServicer):
    """``Replica/OpenAI``: the router's relay contract, answered with pre-encoded SSE chunks."""

    def __init__(self, interval_s: float = 0.0) -> None:
        self.interval_s = interval_s
        self.replica_id = "null"
        self.relay_port = 0

    async def OpenAI(self, request, context):  # type: ignore[override]
        async for chunk in self.chunks(request):
            yield chunk

    async def chunks(self, request: replica_pb2.OpenAIRequest) -> AsyncIterator[replica_pb2.OpenAIChunk]:
        """The answer, for the OpenAI RPC and the relay stream alike."""
        body = json.loads(request.body or b"{}")
        kind = "chat" if request.endpoint == replica_pb2.CHAT else "completions"
        n = _max_tokens(body)
        if not body.get("stream"):
            yield replica_pb2.OpenAIChunk(data=json.dumps(_whole(kind, n)).encode(), status=200, finish_reason="length")
            return
        token, last, tail = TOKEN[kind], LAST[kind], _tail(n)
        for i in range(n - 1):
            yield replica_pb2.OpenAIChunk(data=token, status=200 if i == 0 else 0, token_ids=[i], text=" x", resumable=True)
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
        yield replica_pb2.OpenAIChunk(
            data=last + tail, token_ids=[n - 1], text=" x", resumable=True, finish_reason="length", prompt_tokens=4, completion_tokens=n
        )

    async def StreamLoad(self, request, context):  # type: ignore[override]
        async for report in self.load_reports(request):
            yield report

    async def load_reports(self, request: replica_pb2.LoadStreamRequest) -> AsyncIterator[replica_pb2.LoadReport]:
        """An idle replica's reports, for ``StreamLoad`` and the relay port's load stream alike."""
        while True:
            yield replica_pb2.LoadReport(replica_id="null", timestamp=time.time(), kv_capacity_tokens=1 << 20)
            await asyncio.sleep(max(request.interval_ms, 100) / 1000)

    async def Health(self, request, context):  # type: ignore[override]
        return replica_pb2.HealthResponse(ready=True, replica_id="null", model=MODEL, relay_port=self.relay_port)

    async def Abort(self, request, context):  # type: ignore[override]
        return replica_pb2.AbortResponse(found=False)


def _chunk(kind: str, text: str, finish: str | None = None) -> bytes:
    if kind == "chat":
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        obj = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL, "choices": [choice]}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        obj = {"id": "c", "object": "text_completion", "created": 0, "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


TOKEN = {k: _chunk(k, " x") for k in ("chat", "completions")}
PROTO_TOKEN = inference_pb2.GenerateChunk(text=" x").SerializeToString()
PROTO_LAST = inference_pb2.GenerateChunk(
    text=" x", finish_reason="length", usage=inference_pb2.Usage(prompt_tokens=4, completion_tokens=16)
).SerializeToString()
LAST = {k: _chunk(k, " x", "length") for k in ("chat", "completions")}


def _max_tokens(body: dict) -> int:
    return max(int(body.get("max_tokens") or body.get("max_completion_tokens") or 16), 1)


def _usage(n: int) -> dict:
    return {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}


def _whole(kind: str, n: int) -> dict:
    choice: dict = {"index": 0, "finish_reason": "length"}
    choice |= {"message": {"role": "assistant", "content": " x" * n}} if kind == "chat" else {"text": " x" * n}
    return {"id": "c", "object": "chat.completion", "model": MODEL, "choices": [choice], "usage": _usage(n)}


def _tail(n: int) -> bytes:
    tail = {"id": "c", "object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": _usage(n)}
    return b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n"


async def _generate(request: web.Request, kind: str, interval_s: float) -> web.StreamResponse:
    body = await request.json()
    n = _max_tokens(body)
    if not body.get("stream"):
        return web.json_response(_whole(kind, n))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    token = TOKEN[kind]
    for _ in range(n - 1):
        await resp.write(token)
        if interval_s:
            await asyncio.sleep(interval_s)
    await resp.write(LAST[kind] + _tail(n))
    await resp.write_eof()
    return resp


def http_app(interval_s: float = 0.0) -> web.Application:
    app = web.Application()
    ok = lambda _r: web.json_response({"status": "ok"})  # noqa: E731
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "null", "max_model_len": 4096}]}
    info = {"model_path": MODEL, "served_model_name": MODEL, "tokenizer_path": MODEL, "is_generation": True, "max_model_len": 4096}
    app.router.add_post("/v1/chat/completions", lambda r: _generate(r, "chat", interval_s))
    app.router.add_post("/v1/completions", lambda r: _generate(r, "completions", interval_s))
    for path in ("/health", "/health_generate", "/healthz", "/readiness", "/liveness"):
        app.router.add_get(path, ok)
    app.router.add_get("/v1/models", lambda _r: web.json_response(models))
    for path in ("/get_model_info", "/model_info", "/get_server_info", "/server_info"):
        app.router.add_get(path, lambda _r: web.json_response(info))
    return app


async def serve(grpc_port: int, http_port: int, interval_s: float = 0.0) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    replica = NullReplica(interval_s)
    replica_pb2_grpc.add_ReplicaServicer_to_server(replica, server)
    gport = server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    await RelayServer(replica).start("127.0.0.1", 0)  # its port goes to routers in Health
    runner = web.AppRunner(http_app(interval_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", http_port)
    await site.start()
    hport = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"null backend grpc 127.0.0.1:{gport} http http://127.0.0.1:{hport}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--token-interval-ms", type=float, default=0.0, help="pause between tokens (0: back to back)")
    a = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(a.grpc_port, a.http_port, a.token_interval_ms / 1000))  # the loop our router runs on
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
