"""The floor under our router's per-request cost: a bare Python relay on the very parts the router uses.

    python -m loadtests.bench.floor_router --port PORT GRPC_ADDRESS...

A benchmark reference, not a router: ``router_overhead``'s ``python-floor`` system.  Over the same
backends as the others it serves ``POST /v1/chat/completions`` streams only, with our router's own I/O
parts and nothing else: uvloop, the fast HTTP front's head parse (``http_fast.parse_head``, llhttp), one
JSON parse of the body, the request id spliced in, round robin over the replicas' relay pools
(``cluster/router/relay.py``), the first chunk read in Python and the HTTP head written with it, the rest
pumped by the C pump (``cluster/router/_pump.c``).  No authentication, limits, admission queue, validation,
policy, retries, stall watch or metrics.  So ``ours`` less ``python-floor`` is what those cost per request in
Python, and ``python-floor`` against ``vllm-router`` is what the parts themselves cost.

It refuses nothing and survives nothing: a malformed request or a replica failure ends the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time

import grpc
import uvloop

from cluster.proto import replica_pb2, replica_pb2_grpc
from cluster.router.http_fast import FastReply, parse_head
from cluster.router.http_reply import SINK_HIGH
from cluster.router.relay import PAUSED, RelayPool

_BOUNDS = [0.001, 0.01, 0.1, 1.0]


def _fold(counts: object, total: float, n: int) -> None:
    """The pump's inter-token gaps: not kept (no metrics here)."""


async def relay_pools(addresses: list[str]) -> list[RelayPool]:
    pools = []
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            health = await replica_pb2_grpc.ReplicaStub(channel).Health(replica_pb2.HealthRequest(), timeout=10)
        pools.append(RelayPool(address.rsplit(":", 1)[0], health.relay_port, pump="native"))
    return pools


class FloorFront(asyncio.Protocol):
    """One client connection; one task per request (keep-alive, no pipelining)."""

    def __init__(self, pools: itertools.cycle[RelayPool]) -> None:
        self.pools = pools
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        head = parse_head(buf[: end + 4]) if end >= 0 else None
        if head is None or len(buf) < end + 4 + head[2]:
            self.buf = buf
            return
        stop = end + 4 + head[2]
        self.buf = buf[stop:]
        asyncio.get_running_loop().create_task(self.one(buf[end + 4 : stop]))

    async def one(self, raw: bytes) -> None:
        json.loads(raw)  # what any router does first
        rid = os.urandom(16).hex()
        body = b'{"request_id":"%s",%s' % (rid.encode(), raw.lstrip()[1:])
        call = await next(self.pools).call(replica_pb2.OpenAIRequest(request_id=rid, endpoint=replica_pb2.CHAT, body=body))
        chunk = await call.read()
        assert isinstance(chunk, replica_pb2.OpenAIChunk)
        reply = FastReply(self.transport)
        sink = await reply.start(200, chunk.data)  # the head with the first bytes, as the router's fast front writes them
        pump = call.pump_type(sink.transport, True, list(chunk.token_ids), [chunk.text], _BOUNDS, _fold, 64, time.monotonic(), SINK_HIGH)
        while await call.pump(pump) is PAUSED:
            await sink.drained()
        await reply.end()


async def serve(port: int, addresses: list[str]) -> None:
    pools = itertools.cycle(await relay_pools(addresses))
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: FloorFront(pools), "127.0.0.1", port)
    print(f"floor router on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("replicas", nargs="+", help="the backends' gRPC addresses (host:port)")
    args = p.parse_args(argv)
    try:
        uvloop.run(serve(args.port, args.replicas))
    except KeyboardInterrupt:  # the benchmark stops it with SIGINT: an ordinary end, no traceback
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
