"""`llm-cluster replica --engine sim --http-port 0`: the replica's own OpenAI API, for foreign gateways."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import requests

pytestmark = pytest.mark.slow


def test_a_sim_replica_serves_an_openai_api_and_the_probes_gateways_use():
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "replica",
            "--engine",
            "sim",
            "--http-port",
            "0",
            "--set",
            "models.0.engine_args={time_scale: 0.05}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = p.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r"http (http://[\d.]+:\d+)", line)
        assert m, line
        url = m.group(1)
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        models = requests.get(f"{url}/v1/models", timeout=5).json()
        model = models["data"][0]["id"]
        assert requests.get(f"{url}/get_model_info", timeout=5).json()["model_path"] == model
        body = {
            "model": model,
            "messages": [{"role": "system", "content": "shared " * 200}, {"role": "user", "content": "hi"}],
            "max_tokens": 3,
        }
        first = requests.post(f"{url}/v1/chat/completions", json=body, timeout=10).json()
        assert first["usage"]["completion_tokens"] == 3
        second = requests.post(f"{url}/v1/chat/completions", json=body, timeout=10).json()
        assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        info = requests.get(f"{url}/get_server_info", timeout=5).json()
        assert info["prefix_cache_hits"] == second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert info["prefix_cache_queries"] >= 2 * first["usage"]["prompt_tokens"]
        bad = requests.post(f"{url}/v1/chat/completions", json={"model": model, "messages": "nope"}, timeout=5)
        assert bad.status_code == 400
    finally:
        p.send_signal(signal.SIGINT)
        assert p.wait(15) == 0


async def test_the_replica_api_streams_sse_and_refuses_a_foreign_model_and_a_broken_body_naming_them():
    import aiohttp

    from cluster.engine.sim import SimEngine
    from cluster.replica.http_api import start_replica_http
    from cluster.replica.server import ReplicaServicer

    engine = SimEngine({"time_scale": 0.05}, model_name="sim")
    servicer = ReplicaServicer(engine, "r0", "sim")
    runner, port = await start_replica_http(servicer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}  # no model: its only one
            async with s.post(f"{url}/v1/chat/completions", json=body, headers={"x-request-id": "abc"}) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                events = [line for line in (await r.text()).splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert '"id":"chatcmpl-abc"' in events[0].replace(" ", "")
            async with s.post(f"{url}/v1/completions", json={"model": "other", "prompt": "x"}) as r:
                assert r.status == 404 and (await r.json())["error"]["param"] == "model"
            async with s.post(f"{url}/v1/completions", data=b'{"model": "sim", "prompt": "x", "max_tokens": 1e400}') as r:
                assert r.status == 400 and (await r.json())["error"]["param"] == "max_tokens"
            assert not servicer.in_flight  # every request ended on the replica too
    finally:
        await runner.cleanup()
        await engine.shutdown()
