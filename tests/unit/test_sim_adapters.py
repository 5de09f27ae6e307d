"""LoRA in the sim engine: registered adapters, max_loras active slots, load cost and the swap counter."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from cluster.engine.base import EngineRequest, EngineRequestError, Sampling
from cluster.engine.sim import SimEngine, SimParams
from cluster.engine.sim.adapters import AdapterLimits

FAST = {"prefill_base_ms": 0.0, "prefill_ms_per_token": 0.0, "decode_base_ms": 10.0, "decode_ms_per_seq": 0.0, "time_scale": 0.1}


def req(rid: str, lora: str | None, prompt: str = "hello there", max_tokens: int = 4, **sampling) -> EngineRequest:
    return EngineRequest(request_id=rid, sampling=Sampling(max_tokens=max_tokens, **sampling), prompt=prompt, lora=lora)


async def run(engine: SimEngine, r: EngineRequest) -> str:
    return "".join([d.text async for d in engine.generate(r)])


def engine(max_loras: int = 2, **params) -> SimEngine:
    return SimEngine(SimParams.from_dict({**FAST, **params}), model_name="base", lora=AdapterLimits(max_loras=max_loras))


async def test_a_request_for_an_adapter_the_engine_has_not_loaded_is_refused_naming_it() -> None:
    eng = engine()
    with pytest.raises(EngineRequestError, match="`nope` does not exist"):
        await run(eng, req("a", "nope"))
    await eng.shutdown()


async def test_an_engine_without_lora_refuses_adapter_requests_and_loads() -> None:
    eng = SimEngine(SimParams.from_dict(FAST), model_name="base")
    with pytest.raises(EngineRequestError, match="does not exist"):
        await run(eng, req("a", "x"))
    with pytest.raises(EngineRequestError, match="LoRA is off"):
        await eng.load_adapter("x", "/x")
    await eng.shutdown()


async def test_an_adapter_changes_the_greedy_answer_and_the_base_answer_stays_the_same() -> None:
    eng = engine()
    await eng.load_adapter("a", "sim://a")
    base1 = await run(eng, req("1", None, temperature=0.0))
    with_a = await run(eng, req("2", "a", temperature=0.0))
    base2 = await run(eng, req("3", None, temperature=0.0))
    assert base1 == base2 and with_a != base1
    await eng.shutdown()


async def test_more_adapters_than_slots_swap_and_the_load_report_counts_each_swap() -> None:
    eng = engine(max_loras=2)
    for name in "abc":
        await eng.load_adapter(name, f"sim://{name}")
    for i, name in enumerate("abab"):
        await run(eng, req(f"r{i}", name))
    snap = eng.load()
    assert snap.adapter_swaps == 2  # a and b loaded once each, then reused
    assert set(snap.active_adapters) == {"a", "b"} and set(snap.loaded_adapters) == {"a", "b", "c"}
    await run(eng, req("r9", "c"))
    snap = eng.load()
    assert snap.adapter_swaps == 3 and "c" in snap.active_adapters and len(snap.active_adapters) == 2
    await eng.shutdown()


async def test_a_batch_never_runs_more_distinct_adapters_than_max_loras() -> None:
    eng = engine(max_loras=2)
    for name in "abc":
        await eng.load_adapter(name, f"sim://{name}")
    seen: list[int] = []

    async def watch() -> None:
        while True:
            running = {s.lora for s in eng.scheduler.running.values()}
            seen.append(len(running))
            await asyncio.sleep(0.0005)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(run(eng, req(f"r{i}", "abc"[i % 3], max_tokens=6)) for i in range(9)))
    watcher.cancel()
    assert max(seen) == 2  # the third adapter waited for a slot instead of joining the batch
    await eng.shutdown()


async def test_an_adapter_slot_miss_costs_engine_time() -> None:
    eng = engine(max_loras=1, lora_load_ms=200.0, lora_disk_load_ms=0.0, time_scale=0.1)
    await eng.load_adapter("a", "sim://a")
    await eng.load_adapter("b", "sim://b")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await run(eng, req("1", "a", max_tokens=1))
    miss = loop.time() - t0
    t0 = loop.time()
    await run(eng, req("2", "a", max_tokens=1))
    hit = loop.time() - t0
    assert miss - hit > 0.015  # 200 ms x time_scale 0.1 = 20 ms more on the miss
    await eng.shutdown()


async def test_an_adapter_whose_rank_exceeds_max_lora_rank_is_refused_at_load_and_not_registered(tmp_path: Path) -> None:
    adapter = tmp_path / "big"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 64, "peft_type": "LORA"}))
    eng = engine()
    with pytest.raises(EngineRequestError, match="rank 64, above max_lora_rank 16"):
        await eng.load_adapter("big", str(adapter))
    assert "big" not in eng.load().loaded_adapters
    await eng.shutdown()


async def test_unloading_an_adapter_refuses_its_next_request() -> None:
    eng = engine()
    await eng.load_adapter("a", "sim://a")
    await run(eng, req("1", "a"))
    assert await eng.unload_adapter("a") is True
    assert await eng.unload_adapter("a") is False
    with pytest.raises(EngineRequestError, match="does not exist"):
        await run(eng, req("2", "a"))
    await eng.shutdown()


async def test_the_prefix_cache_is_not_shared_between_an_adapter_and_the_base_model() -> None:
    eng = engine()
    await eng.load_adapter("a", "sim://a")
    prompt = " ".join(f"w{i}" for i in range(64))  # four full 16-token blocks
    await run(eng, req("1", None, prompt=prompt, max_tokens=1))
    hits = eng.load().prefix_cache_hits
    await run(eng, req("2", "a", prompt=prompt, max_tokens=1))
    assert eng.load().prefix_cache_hits == hits  # the adapter's KV is its own
    await run(eng, req("3", "a", prompt=prompt, max_tokens=1))
    assert eng.load().prefix_cache_hits > hits
    await eng.shutdown()
