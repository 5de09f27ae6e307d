"""Tenant limits and overload through the real router over sim replicas, driven open-loop by loadtests.

- limits held: a tenant far over its rate gets 429s while another tenant's TTFT
  stays within its SLO;
- 10x overload: only 429s are refused (no 5xx, no timeout), admitted requests
  keep TTFT p99 within the SLO, and the router's queue and memory stay bounded.

SLOs are generous (the machine is shared and noisy); the figures are printed
for the closing note.
"""

from __future__ import annotations

import asyncio
import collections
import gc

import psutil
import pytest

from cluster.router.auth import digest, new_key
from loadtests.clients.openai_http import OpenAIHTTPClient
from loadtests.openloop import open_loop, percentile
from loadtests.workloads import RequestSpec

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

TTFT_SLO_S = 2.0


def spec(output_tokens: int):
    return lambda i: RequestSpec(prompt=f"request {i}: tell me a story about the number {i}", prompt_tokens=12, output_tokens=output_tokens)


def client(router, key: str | None = None) -> OpenAIHTTPClient:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return OpenAIHTTPClient(f"http://127.0.0.1:{router.http_port}", api="completions", headers=headers)


def summary(results) -> dict:
    ttft = [r.ttft_s for r in results if r.ok and r.ttft_s is not None]
    return {
        "sent": len(results),
        "ok": sum(r.ok for r in results),
        "errors": dict(collections.Counter(r.error for r in results if not r.ok)),
        "ttft_p50": round(percentile(ttft, 50), 3),
        "ttft_p99": round(percentile(ttft, 99), 3),
    }


async def test_a_tenant_over_its_rate_is_refused_while_another_keeps_its_latency(sim_fleet, tmp_path):
    hog_key, chat_key = new_key(), new_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "tenants:\n  hog: {priority: batch, requests_per_minute: 60, max_concurrent: 4}\n  chat: {}\n"
        f"keys:\n  - {{sha256: '{digest(hog_key)}', tenant: hog}}\n  - {{sha256: '{digest(chat_key)}', tenant: chat}}\n"
    )
    router = await sim_fleet.start(
        2, router={"auth": {"enabled": True, "key_file": str(keys)}, "admission": {"max_concurrent_per_replica": 8}}, time_scale=0.5
    )
    hog, chat = client(router, hog_key), client(router, chat_key)
    await hog.open()
    await chat.open()
    try:
        alone = await open_loop(chat, "sim", rate=5, duration_s=2, spec=spec(16), seed=1)
        hog_res, chat_res = await asyncio.gather(
            open_loop(hog, "sim", rate=40, duration_s=4, spec=spec(16), seed=2),
            open_loop(chat, "sim", rate=5, duration_s=4, spec=spec(16), seed=3),
        )
    finally:
        await hog.close()
        await chat.close()
    s_alone, s_hog, s_chat = summary(alone), summary(hog_res), summary(chat_res)
    print(f"\nlimits held: chat alone {s_alone}\n  hog {s_hog}\n  chat beside hog {s_chat}")
    assert set(s_hog["errors"]) == {"http_429"} and s_hog["errors"]["http_429"] >= s_hog["sent"] * 0.3
    assert s_hog["ok"] >= 20  # served up to its limits
    assert s_chat["errors"] == {} and s_chat["ok"] == s_chat["sent"]
    assert s_chat["ttft_p99"] <= TTFT_SLO_S
    assert router.gate.leaks() == {}


async def test_ten_times_overload_is_refused_with_429_and_admitted_requests_keep_their_ttft(sim_fleet):
    # 2 replicas x 4 slots; 32 tokens take about 1.2 s on the sim at full speed: capacity ~ 6.7 requests/s.
    slots, service_s = 8, 1.2
    capacity_rps = slots / service_s
    router = await sim_fleet.start(
        2, router={"admission": {"max_concurrent_per_replica": 4, "max_queue": 16, "queue_timeout_s": 0.5}}, time_scale=1.0
    )
    proc = psutil.Process()
    max_depth = 0
    max_in_flight = 0

    async def sample() -> None:
        nonlocal max_depth, max_in_flight
        while True:
            max_depth = max(max_depth, router.gate.queue("sim").depth())
            max_in_flight = max(max_in_flight, router.gate.queue("sim").in_flight)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    c = client(router)
    await c.open()
    rss: list[float] = []
    waves = []
    try:
        for wave in range(2):
            res = await open_loop(c, "sim", rate=10 * capacity_rps, duration_s=4, spec=spec(32), timeout_s=15, seed=10 + wave)
            waves.append(summary(res))
            gc.collect()
            rss.append(proc.memory_info().rss / 2**20)
    finally:
        sampler.cancel()
        await c.close()
    growth = rss[1] - rss[0]
    print(
        f"\n10x overload ({10 * capacity_rps:.0f} req/s offered vs ~{capacity_rps:.1f} capacity): waves {waves}; "
        f"max queue depth {max_depth}, max admitted in flight {max_in_flight}; RSS {rss[0]:.0f} -> {rss[1]:.0f} MiB"
    )
    for s in waves:
        assert set(s["errors"]) <= {"http_429"}, s  # no 5xx, no timeout, no dropped stream
        assert s["errors"].get("http_429", 0) >= s["sent"] * 0.5
        assert s["ok"] >= capacity_rps * 4 * 0.4
        assert s["ttft_p99"] <= TTFT_SLO_S, s
    assert max_depth <= 16 and max_in_flight <= slots
    assert growth < 40, f"router process grew {growth:.0f} MiB between two identical overload waves"
    assert router.gate.leaks() == {}
