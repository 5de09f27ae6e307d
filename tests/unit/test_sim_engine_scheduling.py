"""The simulated engine's timing and KV cache: latency model, prefix cache, scheduler, lifecycle."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.engine.base import Delta
from cluster.engine.sim import SimEngine, SimParams
from tests.unit.sim_engine_helpers import ONE_MS_STEPS, collect, ids_of, request, sim, text_of, wait_until, words

# -- latency model -----------------------------------------------------------


def test_the_default_params_reproduce_the_measured_vllm_cpu_figures() -> None:
    p = SimParams()
    assert 1000 / p.step_ms(1) == pytest.approx(28, rel=0.05)  # one stream, tokens/s
    assert 8 * 1000 / p.step_ms(8) == pytest.approx(230, rel=0.05)  # eight streams, total tokens/s
    # 740-token prompt: TTFT = prefill + the step that samples the first token.
    assert p.prefill_ms(740) + p.step_ms(1) == pytest.approx(620, rel=0.05)
    assert p.prefill_ms(740 - 736) + p.step_ms(1) == pytest.approx(130, rel=0.05)


@pytest.mark.asyncio
async def test_time_to_first_token_follows_the_prefill_model_cold_and_cached() -> None:
    scale = 0.2
    async with sim(time_scale=scale) as engine:
        p = engine.params
        prompt = words(740)
        for expected_cached in (0, 736):  # 46 full blocks of 16 are reusable the second time
            start = time.perf_counter()
            (delta,) = await collect(engine, request(f"r{expected_cached}", prompt, max_tokens=1))
            ttft = time.perf_counter() - start
            model_ms = p.prefill_ms(740 - expected_cached) + p.step_ms(1)
            assert delta.cached_prompt_tokens == expected_cached
            assert ttft == pytest.approx(model_ms * scale / 1000, rel=0.15, abs=0.005)


@pytest.mark.asyncio
@pytest.mark.parametrize("batch", [1, 8])
async def test_a_batch_of_n_streams_steps_at_the_formula_rate(batch: int) -> None:
    scale = 0.5
    async with sim(prefill_base_ms=1.0, prefill_ms_per_token=0.0, decode_base_ms=10.0, decode_ms_per_seq=5.0, time_scale=scale) as engine:
        stamps: dict[str, list[float]] = {}

        async def stream(rid: str) -> None:
            stamps[rid] = [time.perf_counter() async for _ in engine.generate(request(rid, max_tokens=21))]

        await asyncio.gather(*(stream(f"r{i}") for i in range(batch)))
        expected_s = engine.params.step_ms(batch) * scale / 1000
        for ts in stamps.values():
            assert len(ts) == 21
            assert (ts[-1] - ts[0]) / 20 == pytest.approx(expected_s, rel=0.1)


# -- prefix cache ------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_repeated_prefix_is_served_from_cache() -> None:
    async with sim(time_scale=0.0) as engine:
        shared = words(100)
        prompts = (shared + " tail", shared + " ends here")
        first = await collect(engine, request("a", prompts[0]))
        second = await collect(engine, request("b", prompts[1]))
        assert first[-1].cached_prompt_tokens == 0
        assert second[-1].cached_prompt_tokens == 96  # 6 full blocks of the 100 shared tokens
        snap = engine.load()
        assert snap.prefix_cache_queries == 101 + 102
        assert snap.prefix_cache_hits == 96
        assert snap.kv_cache_usage == 0.0  # cached but free blocks are not usage


@pytest.mark.asyncio
async def test_free_cached_blocks_are_evicted_least_recently_used_first() -> None:
    # 16 blocks of 4 tokens; each 16-token prompt fills 4 blocks, 3 of them reusable.
    async with sim(time_scale=0.0, block_size=4, kv_capacity_blocks=16, max_model_len=64) as engine:
        prompts = [words(16, tag) for tag in "abcde"]

        async def cached(i: int, rid: str) -> int:
            return (await collect(engine, request(rid, prompts[i], max_tokens=1)))[-1].cached_prompt_tokens

        for i in range(4):
            assert await cached(i, f"fill{i}") == 0
        assert await cached(0, "touch0") == 12  # prompt 0 becomes the most recently used
        assert await cached(4, "new4") == 0  # needs 4 blocks: evicts prompt 1, the oldest
        assert await cached(0, "again0") == 12
        assert await cached(1, "again1") == 0
        assert engine.num_cached_blocks <= 16


@pytest.mark.asyncio
async def test_a_stream_of_unique_prompts_never_overflows_the_cache() -> None:
    capacity = 40
    async with sim(**ONE_MS_STEPS, block_size=4, kv_capacity_blocks=capacity, max_model_len=64) as engine:
        overflow: list[int] = []

        def unique(i: int) -> str:
            return words(30, f"{chr(97 + i // 26)}{chr(97 + i % 26)}")

        async def one(i: int) -> Delta:
            deltas = []
            async for d in engine.generate(request(f"u{i}", unique(i), max_tokens=4)):
                deltas.append(d)
                if engine.num_cached_blocks > capacity or engine.load().kv_cache_usage > 1.0:
                    overflow.append(i)
            return deltas[-1]

        for wave in range(5):
            finals = await asyncio.gather(*(one(wave * 6 + i) for i in range(6)))
            assert all(f.finish_reason == "length" for f in finals)
        assert overflow == []
        assert engine.num_cached_blocks <= capacity
        assert engine.load().kv_cache_usage == 0.0
        # The first prompts were evicted long ago; the most recent one survives
        # the next allocation because the oldest free blocks go first.
        latest = words(30, "zz")
        await collect(engine, request("latest", latest, max_tokens=1))
        assert (await collect(engine, request("old", unique(0), max_tokens=1)))[-1].cached_prompt_tokens == 0
        assert (await collect(engine, request("again", latest, max_tokens=1)))[-1].cached_prompt_tokens == 28


# -- scheduler ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_requests_queue_when_the_kv_cache_is_full() -> None:
    # 10 blocks of 16: two 64-token prompts take 8, so the next ones must wait.
    async with sim(**ONE_MS_STEPS, kv_capacity_blocks=10, max_model_len=160) as engine:
        tasks = {rid: asyncio.create_task(collect(engine, request(rid, words(64, rid), max_tokens=16))) for rid in ("a", "b", "c", "d")}
        await wait_until(lambda: engine.load().running == 2)
        snap = engine.load()
        assert snap.waiting == 2
        assert snap.kv_cache_usage >= 0.8

        assert await engine.abort("d") is True  # a queued request leaves the queue at once
        assert engine.load().waiting == 1

        results = {rid: await t for rid, t in tasks.items()}
        assert [results[r][-1].finish_reason for r in "abcd"] == ["length", "length", "length", "abort"]
        assert results["c"][-1].completion_tokens == 16
        assert results["d"][-1].completion_tokens == 0
        assert engine.load().kv_cache_usage == 0.0


@pytest.mark.asyncio
async def test_a_request_that_outgrows_the_cache_is_preempted_and_still_completes() -> None:
    # Two 50-token prompts fit (4 blocks each) but grow to 6 blocks each: 12 > 8.
    tight = {"time_scale": 0.0, "kv_capacity_blocks": 8, "max_model_len": 128}
    reqs = [request(rid, words(50, rid), max_tokens=40, seed=i) for i, rid in enumerate("ab")]
    async with sim(**tight) as engine:
        outs = await asyncio.gather(*(collect(engine, r) for r in reqs))
        assert engine.num_preemptions >= 1
    async with sim(time_scale=0.0) as roomy:
        expected = [await collect(roomy, r) for r in reqs]
    for got, want in zip(outs, expected, strict=True):
        assert got[-1].finish_reason == "length"
        assert got[-1].completion_tokens == 40
        assert (text_of(got), ids_of(got)) == (text_of(want), ids_of(want))


@pytest.mark.asyncio
async def test_abort_frees_blocks_and_the_running_slot_at_once() -> None:
    async with sim(**ONE_MS_STEPS) as engine:
        streams = {rid: engine.generate(request(rid, words(40, rid), max_tokens=1000)) for rid in ("a", "b")}
        for s in streams.values():
            await anext(s)
        before = engine.load()
        assert before.running == 2

        assert await engine.abort("a") is True
        after = engine.load()
        assert after.running == 1
        assert after.kv_cache_usage < before.kv_cache_usage
        rest = [d async for d in streams["a"]]
        assert rest[-1].finish_reason == "abort"
        assert await engine.abort("a") is False
        await streams["b"].aclose()  # closing the iterator aborts too


@pytest.mark.asyncio
async def test_cancelling_the_stream_aborts_the_request() -> None:
    async with sim(**ONE_MS_STEPS) as engine:
        task = asyncio.create_task(collect(engine, request("a", words(40), max_tokens=1000)))
        await wait_until(lambda: engine.load().running == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        snap = engine.load()
        assert (snap.running, snap.waiting, snap.kv_cache_usage) == (0, 0, 0.0)
        assert await engine.abort("a") is False


# -- lifecycle ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_shutdown_ends_every_stream_with_abort_and_leaves_no_task() -> None:
    engine = SimEngine(SimParams(**ONE_MS_STEPS, kv_capacity_blocks=6, max_model_len=96))
    tasks = [asyncio.create_task(collect(engine, request(rid, words(60, rid), max_tokens=500))) for rid in "abc"]
    await wait_until(lambda: engine.load().running >= 1 and engine.load().waiting >= 1)
    await engine.shutdown()
    finals = [(await t)[-1] for t in tasks]
    assert [f.finish_reason for f in finals] == ["abort"] * 3
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    with pytest.raises(RuntimeError, match="shut down"):
        await collect(engine, request("late"))


def test_an_engine_built_outside_an_event_loop_starts_on_first_generate() -> None:
    engine = SimEngine(SimParams(time_scale=0.0))

    async def main() -> list[Delta]:
        try:
            return await collect(engine, request("a", max_tokens=3))
        finally:
            await engine.shutdown()

    out = asyncio.run(main())
    assert out[-1].finish_reason == "length"
    assert out[-1].completion_tokens == 3
