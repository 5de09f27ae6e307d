"""The `llm-cluster` command as a user runs it: up (sim), status, requests, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import requests

from cluster.cli import ENV_MARKER, build_parser
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=timeout)


def owned_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(ENV_MARKER) == "1":
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        r = cli(name, "--help", timeout=60)
        assert r.returncode == 0 and "usage:" in r.stdout, name


def test_a_bad_config_value_is_one_clear_error():
    r = cli("up", "--set", "router.policy=fastest", "--detach", timeout=60)
    assert r.returncode == 2
    assert "config field 'router.policy': unknown policy 'fastest'" in r.stderr


def test_up_sim_detached_serves_quickly_and_down_leaves_nothing_behind():
    grpc_port, http_port = free_port(), free_port()
    t0 = time.monotonic()
    up = cli("up", "--engine", "sim", "--replicas", "4", "--detach", "--grpc-port", str(grpc_port), "--http-port", str(http_port))
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = requests.post(f"http://127.0.0.1:{http_port}/v1/chat/completions", json=body, timeout=30)
        served_after = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert served_after < 30, f"first answer {served_after:.1f} s after `up`"
        st = cli("status", "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert [r["state"] for r in status["replicas"]] == ["READY"] * 4
        text = cli("status")
        assert text.stdout.count("READY") == 4
        chat = cli("chat", "hello", "--target", f"127.0.0.1:{grpc_port}", "--max-tokens", "3")
        assert chat.returncode == 0 and chat.stdout.strip()
        assert owned_processes(), "the Ray head that `up` started should carry the ownership marker"
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    time.sleep(1)
    assert owned_processes() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)
    assert os.environ.get(ENV_MARKER) is None
