"""The `llm-cluster` command as a user runs it: up (sim), status, requests, down.

Every command runs the way the README prints it, `.venv/bin/llm-cluster ...`, in a clean environment
(`env -i PATH=... HOME=...`): nothing the test suite sets for itself (Ray variables included) reaches it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from cluster.cli import ENV_MARKER, build_parser
from tests.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]

LLM_CLUSTER = str(Path(sys.executable).parent / "llm-cluster")


@pytest.fixture
def ray_tmpdir() -> Iterator[str]:
    """A Ray temp root of the test's own (short: Ray's socket paths must fit in 107 characters)."""
    path = tempfile.mkdtemp(prefix="ray-cli-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def clean_env(ray_tmpdir: str) -> dict[str, str]:
    # A user's plain shell: PATH and HOME only.  RAY_TMPDIR is the one addition, for isolation: on a shared
    # machine other people's Ray clusters record themselves in the default /tmp/ray, and `status`/`down`
    # must find (and stop) the cluster this test started, not theirs.
    return {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "RAY_TMPDIR": ray_tmpdir}


def cli(ray_tmpdir: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LLM_CLUSTER, *args], capture_output=True, text=True, timeout=timeout, env=clean_env(ray_tmpdir))


def budget(seconds: float) -> float:
    """``seconds`` on an idle machine, stretched by the run queue beyond one task per core: a command here
    uses ~1 s of CPU, and on a shared 2-core machine at load 10 it gets a fifth of a core."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def timed(ray_tmpdir: str, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = cli(ray_tmpdir, *args, timeout=timeout)
    return result, time.monotonic() - started


def owned_processes(ray_tmpdir: str) -> list[psutil.Process]:
    """Processes of the cluster started with this Ray temp root: the marker's value names it, or, for the Ray
    agents whose environment reads empty (they write their process title over it), a file they hold open
    under it (their logs)."""
    owner = str(Path(ray_tmpdir).resolve())
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(ENV_MARKER) == owner or any(f.path.startswith(owner + "/") for f in p.open_files()):
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def test_every_command_has_help(ray_tmpdir):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        r = cli(ray_tmpdir, name, "--help", timeout=60)
        assert r.returncode == 0 and "usage:" in r.stdout, name


def test_a_bad_config_value_is_one_clear_error(ray_tmpdir):
    r = cli(ray_tmpdir, "up", "--set", "router.policy=fastest", "--detach", timeout=60)
    assert r.returncode == 2
    assert "config field 'router.policy': unknown policy 'fastest'" in r.stderr


def test_commands_without_a_cluster_fail_within_10_s_with_one_line(ray_tmpdir):
    # A record of a cluster that is gone (as after a crash) must not make them wait for it.
    (Path(ray_tmpdir) / "ray").mkdir()
    (Path(ray_tmpdir) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    for args in (
        ("status",),
        ("router", "--create-controller", "--grpc-port", "0", "--http-port", "0"),
        ("autoscaler", "--scrape", "--once", "--metrics-port", "0"),
    ):
        r, took = timed(ray_tmpdir, *args, timeout=60)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert took < budget(10), f"{args}: {took:.1f} s"
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "no running cluster found" in lines[0], (args, r.stderr)
    down, took = timed(ray_tmpdir, "down", timeout=60)
    assert down.returncode == 0 and "no running cluster found" in down.stdout and took < budget(10), (took, down.stderr)


def assert_status_then_down(ray_tmpdir: str, replicas: int) -> None:
    """`status` lists the replicas within 5 s; `down` stops everything within 30 s and leaves no process."""
    st, took = timed(ray_tmpdir, "status", "--json")
    assert st.returncode == 0, st.stderr
    assert took < budget(5), f"status took {took:.1f} s"
    assert [r["state"] for r in json.loads(st.stdout)["replicas"]] == ["READY"] * replicas
    text = cli(ray_tmpdir, "status")
    assert text.stdout.count("READY") == replicas
    owned = owned_processes(ray_tmpdir)
    assert owned, "the Ray head that `up` started should carry the ownership marker"
    # Ray's default puts its workers (the replicas' actors and engines) at nice 15, behind any other process.
    assert {p.nice() for p in owned} == {0}
    down, took = timed(ray_tmpdir, "down")
    assert down.returncode == 0, down.stderr
    assert took < budget(30), f"down took {took:.1f} s"
    # A foreground `up` (it holds its driver's log open under the temp root) ends a moment after `down`.
    deadline = time.monotonic() + 10
    while (left := owned_processes(ray_tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []


def test_up_sim_detached_serves_quickly_and_down_leaves_nothing_behind(ray_tmpdir):
    grpc_port, http_port = free_port(), free_port()
    t0 = time.monotonic()
    ports = ("--grpc-port", str(grpc_port), "--http-port", str(http_port))
    up = cli(ray_tmpdir, "up", "--engine", "sim", "--replicas", "4", "--detach", *ports)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = requests.post(f"http://127.0.0.1:{http_port}/v1/chat/completions", json=body, timeout=30)
        served_after = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert served_after < budget(30), f"first answer {served_after:.1f} s after `up`"
        chat = cli(ray_tmpdir, "chat", "hello", "--target", f"127.0.0.1:{grpc_port}", "--max-tokens", "3")
        assert chat.returncode == 0 and chat.stdout.strip()
        # The autoscaler joins the same cluster from a plain shell (its Ray actuator and replica discovery).
        scale = cli(ray_tmpdir, "autoscaler", "--scrape", "--once", "--dry-run", "--metrics-port", "0")
        assert scale.returncode == 0, scale.stderr[-2000:]
        assert json.loads(scale.stdout.strip().splitlines()[-1])["current"] == 4
        assert_status_then_down(ray_tmpdir, replicas=4)
    finally:
        cli(ray_tmpdir, "down")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)
    assert os.environ.get(ENV_MARKER) is None


def test_a_foreground_up_is_found_by_status_and_stopped_by_down_from_another_shell(ray_tmpdir):
    """As `make serve` runs it: `up` in the foreground of one shell, `status` and `down` from another."""
    grpc_port, http_port = free_port(), free_port()
    args = ["up", "--engine", "sim", "--replicas", "1", "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    up = subprocess.Popen([LLM_CLUSTER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(ray_tmpdir))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in up.stdout or ()], daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while "press Ctrl-C to stop" not in lines.get(timeout=max(0.1, deadline - time.monotonic())):
            assert up.poll() is None, f"`up` ended before serving: {up.stderr.read() if up.stderr else ''}"
        assert_status_then_down(ray_tmpdir, replicas=1)
        assert up.wait(timeout=10) == 0  # the foreground `up` notices and ends too
    finally:
        if up.poll() is None:
            up.kill()
        cli(ray_tmpdir, "down")
