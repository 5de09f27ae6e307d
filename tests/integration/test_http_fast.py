"""The public HTTP port's fast path (cluster/router/http_fast.py) and its handover to aiohttp, over real sockets.

What a user relies on: whichever path serves a request, the answer is the same (status, error JSON, headers,
the stream's bytes); a keep-alive connection that mixes the hot routes with any other keeps working; pipelined
requests are answered in order; unusual requests (Expect, a body too large, a query string) still get
aiohttp's answers.  A query string sends a hot route to aiohttp, which routes by path alone: that gives the
same request over both paths.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl

import pytest

from tests.integration.test_security import auth_cfg, write_keys
from tests.tls_certs import TestCA

pytestmark = pytest.mark.asyncio

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 6, "temperature": 0}
COMPLETION = {"model": "sim", "prompt": "Once upon", "max_tokens": 6, "temperature": 0}
VOLATILE = {"date", "server", "content-length"}
CREATED = re.compile(rb'"created":\d+')  # the replica's clock: two requests may straddle a second


def _steady(body: bytes) -> bytes:
    return CREATED.sub(b'"created":0', body)


def _request(path: str, body: dict | bytes | None = None, headers: dict[str, str] | None = None, method: str = "POST") -> bytes:
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off the connection: status, headers (lower-case names), the body (de-chunked)."""
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return status, headers, body
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


async def _one(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await asyncio.wait_for(_response(reader), 10)
    finally:
        writer.close()


def _same(fast: tuple[int, dict[str, str], bytes], slow: tuple[int, dict[str, str], bytes]) -> None:
    assert fast[0] == slow[0]
    assert _steady(fast[2]) == _steady(slow[2])
    assert {k: v for k, v in fast[1].items() if k not in VOLATILE} == {k: v for k, v in slow[1].items() if k not in VOLATILE}


async def test_a_non_hot_route_after_a_hot_one_on_one_keep_alive_connection_is_answered(sim_fleet):
    router = await sim_fleet.start(1)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
    try:
        for raw in (_request("/v1/chat/completions", CHAT), _request("/v1/models", method="GET"), _request("/v1/completions", COMPLETION)):
            writer.write(raw)
            status, _, body = await asyncio.wait_for(_response(reader), 10)
            assert status == 200, body
        # The third (hot again) was answered on the connection aiohttp took over: a completion, not an error.
        assert json.loads(body)["object"] == "text_completion"
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order_across_the_handover(sim_fleet):
    router = await sim_fleet.start(1)
    await _pipelined(*(await asyncio.open_connection("127.0.0.1", router.http_port)))


async def test_the_handover_works_under_tls_too(sim_fleet, tmp_path):
    ca = TestCA(tmp_path)
    cert, key = ca.issue("router")
    router = await sim_fleet.start(1, router={"tls": {"cert_file": cert, "key_file": key}})
    ctx = ssl.create_default_context(cafile=ca.cert_file)
    await _pipelined(*(await asyncio.open_connection("127.0.0.1", router.http_port, ssl=ctx, server_hostname="localhost")))


async def _pipelined(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Two hot requests and a non-hot one, written at once: three answers, in order."""
    try:
        writer.write(
            _request("/v1/chat/completions", CHAT, {"x-request-id": "first"})
            + _request("/v1/chat/completions", {**CHAT, "stream": True}, {"x-request-id": "second"})
            + _request("/healthz", method="GET")
        )
        first = await asyncio.wait_for(_response(reader), 10)
        second = await asyncio.wait_for(_response(reader), 10)
        health = await asyncio.wait_for(_response(reader), 10)
    finally:
        writer.close()
    assert "first" in json.loads(first[2])["id"]
    assert second[1]["content-type"].startswith("text/event-stream") and b"second" in second[2] and second[2].endswith(b"data: [DONE]\n\n")
    assert json.loads(health[2])["status"] == "ok"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps({"messages": CHAT["messages"], "model": "no-such-model"}).encode(),
        json.dumps({**CHAT, "stream": "yes"}).encode(),
        json.dumps({**CHAT, "max_tokens": -1}).encode(),  # the engine's own 400, relayed
        json.dumps([1, 2]).encode(),
    ],
    ids=["not-json", "unknown-model", "bad-stream", "engine-400", "not-an-object"],
)
async def test_a_bad_request_on_the_fast_path_gets_the_same_4xx_json_as_through_aiohttp(sim_fleet, body):
    router = await sim_fleet.start(1)
    fast = await _one(router.http_port, _request("/v1/chat/completions", body))
    slow = await _one(router.http_port, _request("/v1/chat/completions?via=aiohttp", body))
    assert 400 <= fast[0] < 500
    _same(fast, slow)


async def test_answers_and_streams_are_the_same_bytes_over_both_paths(sim_fleet):
    router = await sim_fleet.start(1)
    for body in (CHAT, {**CHAT, "stream": True}):
        fast = await _one(router.http_port, _request("/v1/chat/completions", body, {"x-request-id": "same"}))
        slow = await _one(router.http_port, _request("/v1/chat/completions?via=aiohttp", body, {"x-request-id": "same"}))
        assert fast[0] == 200
        _same(fast, slow)


async def test_an_odd_request_id_header_is_refused_alike_on_both_paths(sim_fleet):
    router = await sim_fleet.start(1)
    for rid in ("\u00e9t\u00e9".encode(), b"x" * 200, "caf\u00e9".encode("latin-1")):
        raw = _request("/v1/chat/completions", CHAT).replace(b"Host:", b"x-request-id: " + rid + b"\r\nHost:", 1)
        fast = await _one(router.http_port, raw)
        slow = await _one(router.http_port, raw.replace(b"/v1/chat/completions", b"/v1/chat/completions?via=aiohttp", 1))
        _same(fast, slow)


async def test_auth_refusals_on_the_fast_path_match_aiohttps(sim_fleet, tmp_path):
    router = await sim_fleet.start(1, router=auth_cfg(write_keys(tmp_path / "keys.yaml", {"k-good": "team"}, {"team": {}})))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        fast = await _one(router.http_port, _request("/v1/chat/completions", CHAT, headers))
        slow = await _one(router.http_port, _request("/v1/chat/completions?via=aiohttp", CHAT, headers))
        assert fast[0] == 401 and fast[1]["www-authenticate"].startswith("Bearer")
        _same(fast, slow)
    ok = await _one(router.http_port, _request("/v1/chat/completions", CHAT, {"Authorization": "Bearer k-good"}))
    assert ok[0] == 200


async def test_unusual_requests_still_get_aiohttps_answers(sim_fleet):
    router = await sim_fleet.start(1, router={"max_body_bytes": 4096})
    big = json.dumps({**COMPLETION, "prompt": "x" * 8000}).encode()
    status, _, body = await _one(router.http_port, _request("/v1/completions", big))
    assert status == 413 and json.loads(body)["error"]["code"] == 413
    # Expect: 100-continue (aiohttp answers the interim response, then the request).
    reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
    data = json.dumps(CHAT).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: {len(data)}\r\n\r\n"
    writer.write(head.encode())
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
    await reader.readline()
    writer.write(data)
    status, _, body = await asyncio.wait_for(_response(reader), 10)
    writer.close()
    assert status == 200 and json.loads(body)["object"] == "chat.completion"


async def test_a_stream_in_flight_on_the_fast_path_finishes_when_the_router_stops(sim_fleet):
    router = await sim_fleet.start(1)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
    writer.write(_request("/v1/chat/completions", {**CHAT, "max_tokens": 40, "stream": True}))
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
    stopping = asyncio.create_task(router.stop(0.5))  # stops accepting, lets the stream finish
    await asyncio.sleep(0.05)
    rest = await asyncio.wait_for(reader.read(), 20)  # to the end: the router closes the idle connection
    await stopping
    sim_fleet.router = None
    writer.close()
    assert rest.count(b'"content"') >= 30 and rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
