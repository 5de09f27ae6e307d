"""The floor under our router's CPU per relayed message: what ``grpc.aio`` alone costs to read one.

    python -m loadtests.bench.grpc_floor [--streams 16] [--messages 200] [--token-interval-ms 1]

A server process streams ``--messages`` ``OpenAIChunk`` s (one SSE token
each, as the null backend's) on each of ``--streams`` concurrent calls; this
process only reads them (``call.read()`` in a loop, uvloop, as the router's
relay does) and prints its own CPU (all threads: the event loop and gRPC's
completion-queue thread) per message, for the default channel and for a few
channel options that could cut per-message work.  Nothing else runs in the
reader, so no router can relay a message for less over ``grpc.aio``.  For
comparison, the same messages over the replica's relay stream (what the router
reads by default: ``cluster/router/relay.py``, a ``RelayPool`` against a
``RelayServer``), and the same stream read as OpenAI SSE over HTTP/1.1 by
aiohttp (the null backend's own HTTP API, read as the bytes arrive).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import uvloop
from aiohttp import web

from cluster.proto import replica_pb2, replica_pb2_grpc
from cluster.replica.relay import RelayServer
from cluster.router.relay import EOF, RelayPool
from loadtests.bench.null_backend import MODEL, TOKEN, http_app

#: name -> (channel options, server options)
VARIANTS: dict[str, tuple[list[tuple[str, Any]], list[tuple[str, Any]]]] = {
    "default": ([], []),
    "no BDP probe, no retries": ([("grpc.http2.bdp_probe", 0), ("grpc.enable_retries", 0)], [("grpc.http2.bdp_probe", 0)]),
    "optimization_target=throughput": ([("grpc.optimization_target", "throughput"), ("grpc.enable_retries", 0)], []),
}


class _Streamer(replica_pb2_grpc.ReplicaServicer):
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.replica_id = "floor"
        self.relay_port = 0

    async def OpenAI(self, request: replica_pb2.OpenAIRequest, context: Any) -> AsyncIterator[replica_pb2.OpenAIChunk]:
        async for chunk in self.chunks(request):
            yield chunk

    async def chunks(self, request: replica_pb2.OpenAIRequest) -> AsyncIterator[replica_pb2.OpenAIChunk]:
        for i in range(int(request.request_id)):
            yield replica_pb2.OpenAIChunk(data=TOKEN["chat"], token_ids=[i], text=" x", resumable=True)
            if self.interval_s:
                await asyncio.sleep(self.interval_s)


def _serve(ports: Any, options: list[tuple[str, Any]], interval_s: float) -> None:
    async def main() -> None:
        server = grpc.aio.server(options=options)
        replica_pb2_grpc.add_ReplicaServicer_to_server(_Streamer(interval_s), server)
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


async def _read_all(port: int, options: list[tuple[str, Any]], streams: int, messages: int) -> tuple[int, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)

        async def one(n: int) -> int:
            call = stub.OpenAI(replica_pb2.OpenAIRequest(request_id=str(n)))
            got = 0
            while await call.read() is not grpc.aio.EOF:
                got += 1
            return got

        await asyncio.gather(*(one(8) for _ in range(streams)))  # warm the connection
        cpu0 = time.process_time()
        got = sum(await asyncio.gather(*(one(messages) for _ in range(streams))))
        return got, time.process_time() - cpu0


def _serve_relay(ports: Any, interval_s: float) -> None:
    async def main() -> None:
        server = RelayServer(_Streamer(interval_s))
        ports.put(await server.start("127.0.0.1", 0))
        await asyncio.Event().wait()

    asyncio.run(main())


async def _read_relay(port: int, streams: int, messages: int) -> tuple[int, float]:
    pool = RelayPool("127.0.0.1", port)

    async def one(n: int) -> int:
        call = await pool.call(replica_pb2.OpenAIRequest(request_id=str(n)))
        got = 0
        while await call.read() is not EOF:
            got += 1
        return got

    await asyncio.gather(*(one(8) for _ in range(streams)))  # warm the connections
    cpu0 = time.process_time()
    got = sum(await asyncio.gather(*(one(messages) for _ in range(streams))))
    cpu = time.process_time() - cpu0
    pool.close()
    return got, cpu


def _serve_http(ports: Any, interval_s: float) -> None:
    async def main() -> None:
        runner = web.AppRunner(http_app(interval_s), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


async def _read_http(port: int, streams: int, messages: int) -> tuple[int, float]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(n: int) -> int:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": n, "stream": True}
            got = 0
            async with s.post(url, json=body) as r:
                async for data in r.content.iter_any():
                    got += data.count(b'"content"')
            return got

        await asyncio.gather(*(one(8) for _ in range(streams)))
        cpu0 = time.process_time()
        got = sum(await asyncio.gather(*(one(messages) for _ in range(streams))))
        return got, time.process_time() - cpu0


def _measure(name: str, serve: Any, args: tuple, read: Any) -> None:
    """Start ``serve`` in a process of its own, read from it here, print this process's CPU per message."""
    ports: Any = mp.Queue()
    server = mp.Process(target=serve, args=(ports, *args), daemon=True)
    server.start()
    try:
        got, cpu = uvloop.run(read(ports.get(timeout=30)))
    finally:
        server.kill()
    print(f"  {name:<32} {cpu / max(got, 1) * 1e6:6.1f} us  ({got} messages)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--messages", type=int, default=200, help="messages per stream")
    p.add_argument("--token-interval-ms", type=float, default=1.0, help="server pause between messages (0: back to back)")
    a = p.parse_args(argv)
    print(f"{a.streams} streams x {a.messages} messages, {a.token_interval_ms:g} ms apart; reader CPU per message:")
    interval = a.token_interval_ms / 1000
    for name, (channel_opts, server_opts) in VARIANTS.items():
        _measure(name, _serve, (server_opts, interval), lambda port, o=channel_opts: _read_all(port, o, a.streams, a.messages))
    _measure("relay stream (not gRPC)", _serve_relay, (interval,), lambda port: _read_relay(port, a.streams, a.messages))
    _measure("HTTP/1.1 SSE, aiohttp (not gRPC)", _serve_http, (interval,), lambda port: _read_http(port, a.streams, a.messages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
