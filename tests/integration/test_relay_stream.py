"""The relay stream between router and replicas (cluster/common/relay_wire.py), over real sockets on loopback.

What a platform team relies on: the same answers as over the OpenAI RPC, connections reused rather than opened
per request, a client that goes away freeing its slot on the replica, a slow client holding the replica back
(not the router's memory), and mutual TLS on the relay port as on the gRPC one.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest

from cluster.common.relay_wire import MAGIC, REQUEST, frame
from cluster.config import InternalTLSConfig
from cluster.proto import replica_pb2
from cluster.router.relay import EOF, PAUSE_AFTER, RelayPool
from tests.conftest import wait_for
from tests.tls_certs import TestCA

pytestmark = pytest.mark.asyncio

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12, "temperature": 0}


def _calls(fleet) -> list:
    """The first replica's relay connections that carry calls (not a router's load stream)."""
    return [c for c in fleet.servers[0].relay.connections if c.load_task is None]


async def _relay_used(router) -> None:
    handle = router.replicas.by_id["r0"]
    await wait_for(lambda: handle.relay is not None, 5)


async def test_answers_over_the_relay_stream_match_the_openai_rpcs_and_reuse_one_connection(sim_fleet):
    relayed = await sim_fleet.start(1)
    await _relay_used(relayed)
    over_grpc = await sim_fleet.another_router()
    over_grpc.replicas.transport = "grpc"  # the same replicas, called over the OpenAI RPC
    for h in over_grpc.replicas.by_id.values():
        h.relay, h.relay_factory = None, None
    async with aiohttp.ClientSession() as s:
        answers = {}
        for name, router in (("relay", relayed), ("grpc", over_grpc)):
            for _ in range(3):
                async with s.post(f"http://127.0.0.1:{router.http_port}/v1/chat/completions", json=CHAT) as r:
                    assert r.status == 200
                    answers.setdefault(name, []).append((await r.json())["choices"][0]["message"]["content"])
    assert answers["relay"] == answers["grpc"] and len(set(answers["relay"])) == 1
    # Three requests one after the other went over one pooled connection (beside the load streams' own).
    assert len(_calls(sim_fleet)) == 1


async def test_a_client_that_goes_away_mid_stream_frees_its_slot_on_the_replica(sim_fleet):
    router = await sim_fleet.start(1, time_scale=1.0)
    await _relay_used(router)
    body = {**CHAT, "max_tokens": 500, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            await r.content.readline()
            assert sim_fleet.servicers[0].in_flight
    # The router cancelled its call by closing the connection; the replica aborted the request.
    await wait_for(lambda: not sim_fleet.servicers[0].in_flight, 5)
    await wait_for(lambda: not _calls(sim_fleet), 5)
    assert sim_fleet.engines[0].load().running == 0


async def test_a_reader_slower_than_the_engine_pauses_the_socket_and_loses_nothing(sim_fleet):
    await sim_fleet.start(1, time_scale=0.001)
    port = sim_fleet.servers[0].relay_port
    pool = RelayPool("127.0.0.1", port)
    body = b'{"model": "sim", "prompt": "p", "max_tokens": 400, "stream": true}'
    call = await pool.call(replica_pb2.OpenAIRequest(request_id="slow", endpoint=replica_pb2.COMPLETIONS, body=body))
    await wait_for(lambda: call._paused, 10)  # nothing read yet: the socket is paused
    held = len(call._pending)
    assert PAUSE_AFTER <= held < PAUSE_AFTER + 64
    ids = []
    while (chunk := await call.read()) is not EOF:
        ids.extend(chunk.token_ids)
    assert len(ids) == 400
    pool.close()


async def test_the_relay_port_takes_no_client_without_the_cluster_certificate(sim_fleet, tmp_path):
    ca = TestCA(tmp_path)
    node_cert, node_key = ca.issue("cluster-node")
    tls = InternalTLSConfig(ca_file=ca.cert_file, cert_file=node_cert, key_file=node_key)
    router_cert, router_key = ca.issue("router")
    router = await sim_fleet.start(1, internal_tls=tls, router={"tls": {"cert_file": router_cert, "key_file": router_key}})
    await _relay_used(router)
    client_ctx = ssl.create_default_context(cafile=ca.cert_file)
    async with aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{router.http_port}/v1/chat/completions"
        async with s.post(url, json=CHAT, ssl=client_ctx) as r:
            assert r.status == 200
            whole = (await r.json())["choices"][0]["message"]["content"]
        # A stream, pumped to the client's TLS socket by the relay: the same text, then [DONE].
        async with s.post(url, json={**CHAT, "stream": True}, ssl=client_ctx) as r:
            lines = [line async for line in r.content if line.strip()]
    assert lines[-1] == b"data: [DONE]\n"
    deltas = [json.loads(line[6:])["choices"] for line in lines[:-1]]
    assert "".join(c[0]["delta"].get("content") or "" for c in deltas if c) == whole
    assert _calls(sim_fleet)  # the answers came over the (mutual TLS) relay stream
    trust_only = ssl.create_default_context(cafile=ca.cert_file)
    reader, writer = await asyncio.open_connection("127.0.0.1", sim_fleet.servers[0].relay_port, ssl=trust_only)
    request = replica_pb2.OpenAIRequest(request_id="x", endpoint=replica_pb2.CHAT, body=b"{}").SerializeToString()
    writer.write(MAGIC + frame(REQUEST, request))
    try:
        data = await asyncio.wait_for(reader.read(), 5)  # TLS 1.3: the refusal arrives with the first read
    except (ssl.SSLError, ConnectionError):
        data = b""
    assert data == b""  # refused: not one frame came back
    writer.close()


@pytest.mark.parametrize("pump", ["native", "python"])
async def test_a_stream_paused_for_a_full_client_buffer_resumes_with_nothing_lost(sim_fleet, monkeypatch, pump):
    # A loopback client's kernel buffers take a whole sim stream, so "full" is reported by the client's
    # transport here, every other write (a write carries what one read of the replica brought), and draining
    # takes 50 ms: meanwhile the replica's chunks pile up behind a paused socket.  The pump (C or Python)
    # writes to the transport itself, so the transport is what reports.
    from cluster.router import http_reply

    writes, pauses = [0], [0]
    real_init = http_reply.SseSink.__init__

    class FillingTransport:
        def __init__(self, t):
            self.t = t

        def write(self, data):
            self.t.write(data)
            writes[0] += 1

        def is_closing(self):
            return self.t.is_closing()

        def get_write_buffer_size(self):
            return http_reply.SINK_HIGH + 1 if writes[0] % 2 == 0 else self.t.get_write_buffer_size()

    def init(self, transport, chunked, head=None, ends=False):
        real_init(self, FillingTransport(transport), chunked, head, ends)

    async def drained(self):
        pauses[0] += 1
        await asyncio.sleep(0.05)

    monkeypatch.setattr(http_reply.SseSink, "__init__", init)
    monkeypatch.setattr(http_reply.SseSink, "drained", drained)
    router = await sim_fleet.start(1, time_scale=0.001, router={"relay_pump": pump})
    await _relay_used(router)
    body = {"model": "sim", "prompt": "p", "max_tokens": 1000, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    texts, usage = [], None
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/completions", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data: {"):
                    event = json.loads(line[6:])
                    texts += [c["text"] for c in event["choices"]]
                    usage = event.get("usage") or usage
    assert usage["completion_tokens"] == 1000 and len(texts) == 1000
    assert pauses[0] >= 2, writes  # the stream really was paused and resumed
    # The same request without pauses: the same text, in the same order.
    monkeypatch.undo()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/completions", json=body) as r:
            again = [json.loads(line[6:]) for line in [x async for x in r.content] if line.startswith(b"data: {")]
    assert [c["text"] for e in again for c in e["choices"]] == texts
