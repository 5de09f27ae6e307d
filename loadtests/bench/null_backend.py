"""A replica that costs next to nothing: both ``replica.proto`` (for our router) and OpenAI SSE (for gateways).

    python -m loadtests.bench.null_backend [--grpc-port 0] [--http-port 0]

Prints ``null backend grpc 127.0.0.1:P http http://127.0.0.1:Q`` once serving.
Every request streams ``max_tokens`` one-token chunks as fast as the
transport takes them (pre-encoded on the HTTP side), then the finish chunk
with usage: no model, no tokenizer, so what a benchmark measures in front of
it is the router's own work.  ``Replica/StreamLoad`` reports an idle replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

import grpc
from aiohttp import web

from cluster.proto import inference_pb2, replica_pb2, replica_pb2_grpc

MODEL = "smollm2-135m-instruct"


class NullReplica(replica_pb2_grpc.ReplicaServicer):
    async def OpenAI(self, request, context):  # type: ignore[override]
        body = json.loads(request.body)
        n = max(int(body.get("max_tokens") or 16), 1)
        kind = "chat" if request.endpoint == replica_pb2.CHAT else "completions"
        if request.format == replica_pb2.PROTO:
            token, last = PROTO_TOKEN, PROTO_LAST
        else:
            token, last = TOKEN[kind], LAST[kind] + b"data: [DONE]\n\n"
        yield replica_pb2.OpenAIChunk(data=token, status=200, token_ids=[0], text=" x", resumable=True)
        for i in range(1, n - 1):
            yield replica_pb2.OpenAIChunk(data=token, token_ids=[i], text=" x", resumable=True)
        yield replica_pb2.OpenAIChunk(
            data=last, token_ids=[n - 1], text=" x", finish_reason="length", prompt_tokens=4, completion_tokens=n, resumable=True
        )

    async def StreamLoad(self, request, context):  # type: ignore[override]
        while True:
            yield replica_pb2.LoadReport(replica_id="null", timestamp=time.time(), kv_capacity_tokens=1 << 20)
            await asyncio.sleep(max(request.interval_ms, 100) / 1000)

    async def Health(self, request, context):  # type: ignore[override]
        return replica_pb2.HealthResponse(ready=True, replica_id="null", model=MODEL)

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


async def _generate(request: web.Request, kind: str) -> web.StreamResponse:
    body = await request.json()
    n = max(int(body.get("max_tokens") or body.get("max_completion_tokens") or 16), 1)
    usage = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": n + 4}
    if not body.get("stream"):
        choice = {"index": 0, "finish_reason": "length"}
        choice |= {"message": {"role": "assistant", "content": " x" * n}} if kind == "chat" else {"text": " x" * n}
        return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL, "choices": [choice], "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    token = TOKEN[kind]
    for _ in range(n - 1):
        await resp.write(token)
    await resp.write(LAST[kind])
    tail = {"id": "c", "object": "chat.completion.chunk", "model": MODEL, "choices": [], "usage": usage}
    await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


def http_app() -> web.Application:
    app = web.Application()
    ok = lambda _r: web.json_response({"status": "ok"})  # noqa: E731
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "null", "max_model_len": 4096}]}
    info = {"model_path": MODEL, "served_model_name": MODEL, "tokenizer_path": MODEL, "is_generation": True, "max_model_len": 4096}
    app.router.add_post("/v1/chat/completions", lambda r: _generate(r, "chat"))
    app.router.add_post("/v1/completions", lambda r: _generate(r, "completions"))
    for path in ("/health", "/health_generate", "/healthz", "/readiness", "/liveness"):
        app.router.add_get(path, ok)
    app.router.add_get("/v1/models", lambda _r: web.json_response(models))
    for path in ("/get_model_info", "/model_info", "/get_server_info", "/server_info"):
        app.router.add_get(path, lambda _r: web.json_response(info))
    return app


async def serve(grpc_port: int, http_port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    replica_pb2_grpc.add_ReplicaServicer_to_server(NullReplica(), server)
    gport = server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    runner = web.AppRunner(http_app(), access_log=None)
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
    a = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.grpc_port, a.http_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
