"""A real Prometheus (the Debian package's binary) on loopback, for tests that query what it scraped."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_prometheus(config: str, ready_timeout_s: float = 30.0) -> Iterator[str]:
    """Prometheus with ``config`` (its YAML; ``$SELF``: its own address, to scrape itself) until the block ends;
    yields its URL once ``/-/ready`` answers."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: `make prometheus-bin` installs the Debian package")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "prometheus.yml"
        conf.write_text(config.replace("$SELF", f"127.0.0.1:{port}"))
        args = [binary, f"--config.file={conf}", f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{port}"]
        proc = subprocess.Popen([*args, "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                    raise AssertionError(f"prometheus did not start: {err}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


async def query(url: str, promql: str) -> list[dict]:
    """An instant query's result vector."""
    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/v1/query", params={"query": promql}) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]
