"""Keys, tenant limits, the admission queue, odd input and TLS, through a real router over sim replicas."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp
import grpc
import openai
import pytest

from cluster.client import build_request
from cluster.config import InternalTLSConfig
from cluster.proto import inference_pb2, inference_pb2_grpc, replica_pb2, replica_pb2_grpc
from cluster.router.auth import digest, new_key
from tests.tls_certs import TestCA

pytestmark = pytest.mark.asyncio

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def write_keys(path, keys: dict[str, str], tenants: dict[str, dict]) -> str:
    lines = ["tenants:"] + [f"  {t}: {json.dumps(spec)}" for t, spec in tenants.items()]
    lines += ["keys:"] + [f"  - {{sha256: '{digest(k)}', tenant: {t}}}" for k, t in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def auth_cfg(key_file: str, **admission) -> dict:
    out: dict = {"auth": {"enabled": True, "key_file": key_file, "reload_interval_s": 0.1}}
    if admission:
        out["admission"] = admission
    return out


async def post(session: aiohttp.ClientSession, router, body: dict, key: str | None = None, path: str = "/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.post(f"http://127.0.0.1:{router.http_port}{path}", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json()


async def test_requests_without_a_valid_key_get_401_and_unauthenticated(sim_fleet, tmp_path):
    key = new_key()
    router = await sim_fleet.start(1, router=auth_cfg(write_keys(tmp_path / "keys.yaml", {key: "team"}, {"team": {}})))
    async with aiohttp.ClientSession() as s:
        for presented in (None, "llmc-wrong", key[:-1]):
            status, headers, body = await post(s, router, CHAT, presented)
            assert status == 401 and body["error"]["type"] == "authentication_error"
            assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        status, _, body = await post(s, router, CHAT, key)
        assert status == 200 and body["usage"]["completion_tokens"] == 4
        async with s.get(f"http://127.0.0.1:{router.http_port}/v1/models") as r:
            assert r.status == 401
        async with s.get(f"http://127.0.0.1:{router.http_port}/healthz") as r:
            assert r.status == 200  # probes need no key
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key=key, max_retries=0)
    assert [m.id for m in (await client.models.list()).data] == ["sim"]
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=client.base_url, api_key="nope", max_retries=0).models.list()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = build_request("hi", model="sim", chat=False, max_tokens=3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(req, metadata=(("authorization", "Bearer bad"),)):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListModels(inference_pb2.ListModelsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        chunks = [c async for c in stub.Generate(req, metadata=(("authorization", f"Bearer {key}"),))]
        assert chunks[-1].usage.completion_tokens == 3


async def test_a_new_key_file_is_picked_up_without_restart(sim_fleet, tmp_path):
    old, new = new_key(), new_key()
    path = tmp_path / "keys.yaml"
    router = await sim_fleet.start(1, router=auth_cfg(write_keys(path, {old: "a"}, {"a": {}})))
    async with aiohttp.ClientSession() as s:
        assert (await post(s, router, CHAT, old))[0] == 200
        write_keys(path, {new: "a"}, {"a": {}})  # rotate: the old key is revoked
        for _ in range(50):
            if (await post(s, router, CHAT, new))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await post(s, router, CHAT, new))[0] == 200
        assert (await post(s, router, CHAT, old))[0] == 401
        path.write_text("keys: [oops\n")  # a broken file keeps the last good keys
        await asyncio.sleep(0.4)
        assert (await post(s, router, CHAT, new))[0] == 200


async def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_are_served(sim_fleet, tmp_path):
    hog, other = new_key(), new_key()
    kf = write_keys(tmp_path / "k.yaml", {hog: "hog", other: "other"}, {"hog": {"requests_per_minute": 3}, "other": {}})
    router = await sim_fleet.start(1, router=auth_cfg(kf))
    labels = {"tenant": "hog", "reason": "requests_per_minute"}
    async with aiohttp.ClientSession() as s:
        statuses = [(await post(s, router, CHAT, hog))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        t0 = time.monotonic()
        status, headers, body = await post(s, router, CHAT, hog)
        assert status == 429 and time.monotonic() - t0 < 1.0  # refused at once, not queued
        assert int(headers["Retry-After"]) >= 1 and "requests per minute" in body["error"]["message"]
        assert (await post(s, router, CHAT, other))[0] == 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        call = inference_pb2_grpc.InferenceStub(ch).Generate(
            build_request("x", model="sim", chat=False, max_tokens=2), metadata=(("authorization", f"Bearer {hog}"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(dict(err.value.trailing_metadata())["retry-after"]) >= 1
    # Both refusals are counted for the operators (router metrics port).
    assert router.metrics.value("refused_total", labels) == 2


async def test_token_and_concurrency_limits_refuse_and_free_when_requests_end(sim_fleet, tmp_path):
    key = new_key()
    kf = write_keys(tmp_path / "k.yaml", {key: "t"}, {"t": {"max_concurrent": 1, "tokens_per_minute": 700}})
    router = await sim_fleet.start(1, router=auth_cfg(kf))
    long = {**CHAT, "max_tokens": 300}
    async with aiohttp.ClientSession() as s:
        first = asyncio.create_task(post(s, router, long, key))
        await asyncio.sleep(0.1)
        status, _, body = await post(s, router, CHAT, key)
        assert status == 429 and "concurrent" in body["error"]["message"]
        assert (await first)[0] == 200
        # About 310 tokens used each (prompt + 300): two fit 700/min, a third must wait for refill.
        assert (await post(s, router, long, key))[0] == 200
        status, _, body = await post(s, router, long, key)
        assert status == 429 and "tokens per minute" in body["error"]["message"]
    assert router.gate.leaks() == {}


async def test_a_full_admission_queue_refuses_with_429_instead_of_waiting(sim_fleet):
    # The running request takes ~2.8 s (400 tokens at time_scale 0.2), longer than the queue deadline.
    router = await sim_fleet.start(
        1, router={"admission": {"max_concurrent_per_replica": 1, "max_queue": 1, "queue_timeout_s": 1.5}}, time_scale=0.2
    )
    long = {**CHAT, "max_tokens": 400}
    async with aiohttp.ClientSession() as s:
        running = asyncio.create_task(post(s, router, long))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(post(s, router, CHAT))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        status, headers, body = await post(s, router, CHAT)
        assert status == 429 and "queue full" in body["error"]["message"] and time.monotonic() - t0 < 1.0
        assert "Retry-After" in headers
        # The queued one waits for its deadline (1.5 s), then is refused the same way.
        status, headers, _ = await queued
        assert status == 429 and "Retry-After" in headers
        assert (await running)[0] == 200
    assert router.gate.leaks() == {}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b'{"model": "sim", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "a\\u0000b"}]}', "messages[0].content"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "body"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "top_p": 0}', "top_p"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "seed": 1e300}', "seed"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "stream_options": "yes"}', "stream_options"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "stop": [""]}', "stop"),
        (b'{"model": "sim", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        (b'{"model": ["sim"], "messages": []}', "model"),
        (b"[1, 2]", "body"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}]', "body"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}', "temperature"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "top_p": 1' + b"0" * 400 + b"}", "top_p"),
        (b'{"model": "sim", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}", "body"),
        (b'{"model": "sim", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "body"),
    ],
)
async def test_odd_input_gets_a_400_naming_the_problem(sim_fleet, payload, param):
    router = await sim_fleet.start(1)
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{router.http_port}/v1/chat/completions"
        async with s.post(url, data=payload, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["message"].startswith(param)


async def test_a_prompt_beyond_the_context_and_malformed_protobuf_get_invalid_argument(sim_fleet):
    router = await sim_fleet.start(1, max_model_len=256)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(build_request("word " * 2000, model="sim", chat=False)):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_model_len 256" in err.value.details()
        raw = ch.unary_stream("/llm_cluster.v1.Inference/Generate", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in raw(b"\x0a\xff\xff\xff\xff\x0f garbage"):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in err.value.details()
        # The router is still fine afterwards.
        chunks = [c async for c in stub.Generate(build_request("ok", model="sim", chat=False, max_tokens=2))]
        assert chunks[-1].finish_reason == "length"


async def test_tls_on_public_ports_and_mutual_tls_to_replicas(sim_fleet, tmp_path):
    ca = TestCA(tmp_path)
    router_cert, router_key = ca.issue("router")
    # One cluster identity for the data plane: replicas serve with it, routers dial with it.
    node_cert, node_key = ca.issue("cluster-node")
    router = await sim_fleet.start(
        1,
        router={"tls": {"cert_file": router_cert, "key_file": router_key}},
        internal_tls=InternalTLSConfig(ca_file=ca.cert_file, cert_file=node_cert, key_file=node_key),
    )
    replica_address = router.replicas.by_id["r0"].address
    ctx = ssl.create_default_context(cafile=ca.cert_file)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"https://127.0.0.1:{router.http_port}/v1/chat/completions", json=CHAT, ssl=ctx) as r:
            assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 4
        with pytest.raises(aiohttp.ClientError):
            async with s.post(f"https://127.0.0.1:{router.http_port}/v1/chat/completions", json=CHAT) as r:
                pass  # not trusting the test CA: the handshake fails
    ca_pem = Path(ca.cert_file).read_bytes()  # noqa: ASYNC240 - a small local file
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{router.grpc_port}", creds) as ch:
        chunks = [
            c async for c in inference_pb2_grpc.InferenceStub(ch).Generate(build_request("hi", model="sim", chat=False, max_tokens=3))
        ]
        assert chunks[-1].usage.completion_tokens == 3
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await inference_pb2_grpc.InferenceStub(ch).ListModels(inference_pb2.ListModelsRequest(), timeout=2)
    # A replica accepts no client without a cluster certificate.
    trust_only = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(replica_address, trust_only) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await replica_pb2_grpc.ReplicaStub(ch).Health(replica_pb2.HealthRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificates_can_be_required_on_the_public_port(sim_fleet, tmp_path):
    ca = TestCA(tmp_path)
    cert, key = ca.issue("router")
    user_cert, user_key = ca.issue("some-client")
    router = await sim_fleet.start(1, router={"tls": {"cert_file": cert, "key_file": key, "client_ca_file": ca.cert_file}})
    ca_pem = Path(ca.cert_file).read_bytes()  # noqa: ASYNC240 - a small local file
    with_cert = grpc.ssl_channel_credentials(ca_pem, Path(user_key).read_bytes(), Path(user_cert).read_bytes())  # noqa: ASYNC240
    async with grpc.aio.secure_channel(f"127.0.0.1:{router.grpc_port}", with_cert) as ch:
        models = await inference_pb2_grpc.InferenceStub(ch).ListModels(inference_pb2.ListModelsRequest(), timeout=5)
        assert [m.name for m in models.models] == ["sim"]
    async with grpc.aio.secure_channel(f"127.0.0.1:{router.grpc_port}", grpc.ssl_channel_credentials(ca_pem)) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await inference_pb2_grpc.InferenceStub(ch).ListModels(inference_pb2.ListModelsRequest(), timeout=2)
    ctx = ssl.create_default_context(cafile=ca.cert_file)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"https://127.0.0.1:{router.http_port}/healthz", ssl=ctx) as r:
                await r.read()
        ctx.load_cert_chain(user_cert, user_key)
        async with s.get(f"https://127.0.0.1:{router.http_port}/healthz", ssl=ctx) as r:
            assert r.status == 200


async def test_a_missing_key_file_or_certificate_fails_at_start_naming_the_field(tmp_path):
    from cluster.config import ConfigError, RouterConfig, ServerTLSConfig
    from cluster.router.gate import Gate
    from cluster.tls import server_credentials

    cfg = RouterConfig.model_validate({"auth": {"enabled": True, "key_file": str(tmp_path / "nope.yaml")}})
    with pytest.raises(ConfigError, match=r"router.auth.key_file.*cannot read"):
        Gate(cfg, balancer=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"router.tls.cert_file.*cannot read"):
        server_credentials(ServerTLSConfig(cert_file=str(tmp_path / "x.crt"), key_file=str(tmp_path / "x.key")))
