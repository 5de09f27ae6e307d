"""The simulated engine: latency model, prefix cache, scheduler, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cluster.engine.base import ChatMessage, Delta, EngineRequest, EngineRequestError, Sampling
from cluster.engine.sim import SimEngine, SimParams, render_chat, tokenize

# Steps of 1 ms real time: slow enough to observe state between steps, fast
# enough for hundreds of steps per test.
ONE_MS_STEPS: dict[str, Any] = {
    "prefill_base_ms": 0.0,
    "prefill_ms_per_token": 0.0,
    "decode_base_ms": 10.0,
    "decode_ms_per_seq": 0.0,
    "time_scale": 0.1,
}


def words(n: int, tag: str = "w") -> str:
    """``n`` distinct words of at most 4 characters: exactly one token each."""
    assert len(tag) + len(str(n - 1)) <= 4
    return " ".join(f"{tag}{i}" for i in range(n))


def request(rid: str, prompt: str = "hello there", max_tokens: int = 8, **sampling: Any) -> EngineRequest:
    resume = sampling.pop("resume", [])
    resume_text = sampling.pop("resume_text", None)
    return EngineRequest(
        request_id=rid,
        sampling=Sampling(max_tokens=max_tokens, **sampling),
        prompt=prompt,
        resume_token_ids=resume,
        resume_text=resume_text,
    )


async def collect(engine: SimEngine, req: EngineRequest) -> list[Delta]:
    return [d async for d in engine.generate(req)]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def ids_of(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


async def wait_until(cond: Callable[[], bool], limit_s: float = 2.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.0005)


@contextlib.asynccontextmanager
async def sim(**overrides: Any) -> AsyncIterator[SimEngine]:
    engine = SimEngine(SimParams(**overrides))
    try:
        yield engine
    finally:
        await engine.shutdown()


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


# -- output ------------------------------------------------------------------


async def _outputs(seed: int) -> dict[str, tuple[str, list[int]]]:
    async with sim(time_scale=0.0, seed=seed) as engine:
        rids = ("x", "y", "z")
        outs = await asyncio.gather(*(collect(engine, request(rid, words(20), max_tokens=20)) for rid in rids))
        return {rid: (text_of(o), ids_of(o)) for rid, o in zip(rids, outs, strict=True)}


@pytest.mark.asyncio
async def test_two_engines_with_the_same_seed_give_the_same_output() -> None:
    assert await _outputs(3) == await _outputs(3)
    assert await _outputs(3) != await _outputs(4)


@pytest.mark.asyncio
async def test_a_request_seed_or_greedy_sampling_overrides_the_engine_seed() -> None:
    outs = []
    for engine_seed, rid in ((1, "p"), (2, "q")):
        async with sim(time_scale=0.0, seed=engine_seed) as engine:
            seeded = await collect(engine, request(rid, max_tokens=12, seed=42))
            greedy = await collect(engine, request(rid + "g", max_tokens=12, temperature=0.0))
            outs.append((text_of(seeded), text_of(greedy)))
    assert outs[0] == outs[1]


@pytest.mark.asyncio
async def test_output_text_retokenizes_to_its_token_ids() -> None:
    async with sim(time_scale=0.0) as engine:
        out = await collect(engine, request("a", max_tokens=30))
        assert all(len(d.token_ids) == 1 for d in out)
        assert engine.tokenize(text_of(out)) == ids_of(out)


@pytest.mark.asyncio
async def test_a_stop_string_ends_the_stream_and_is_trimmed() -> None:
    async with sim(time_scale=0.0) as engine:
        full = text_of(await collect(engine, request("ref", max_tokens=30, seed=11)))
        stop = " " + " ".join(full.split(" ")[10:12])
        cut = full.find(stop)
        out = await collect(engine, request("s", max_tokens=30, seed=11, stop=["never-there", stop]))
        assert out[-1].finish_reason == "stop"
        assert text_of(out) == full[:cut]
        # The token that completed the stop string is counted; nothing after it.
        assert out[-1].completion_tokens == len(full[: cut + len(stop)].split(" "))


@pytest.mark.asyncio
async def test_text_held_back_for_a_possible_stop_string_is_flushed_at_length() -> None:
    async with sim(time_scale=0.0) as engine:
        full = await collect(engine, request("ref", max_tokens=15, seed=5))
        out = await collect(engine, request("s", max_tokens=15, seed=5, stop=["zzzzzzzzzzzz"]))
        assert out[-1].finish_reason == "length"
        assert text_of(out) == text_of(full)
        assert out[0].text == ""  # shorter than the 11 characters held back


# -- request validation and migration ---------------------------------------


@pytest.mark.asyncio
async def test_a_prompt_longer_than_max_model_len_is_rejected() -> None:
    async with sim(time_scale=0.0, max_model_len=32) as engine:
        assert engine.max_model_len == 32
        with pytest.raises(EngineRequestError, match="max_model_len"):
            await collect(engine, request("long", words(33)))
        # A prompt that fits stops with "length" at the context limit.
        out = await collect(engine, request("fits", words(30), max_tokens=10))
        assert (out[-1].finish_reason, out[-1].completion_tokens) == ("length", 2)


@pytest.mark.asyncio
async def test_resumed_tokens_count_as_prompt_and_the_stream_continues_after_them() -> None:
    async with sim(time_scale=0.0) as engine:
        full = await collect(engine, request("m", words(10), max_tokens=10, seed=9))
        done = ids_of(full)[:4]
        resumed = await collect(engine, request("m", words(10), max_tokens=10, seed=9, resume=done))
        assert ids_of(resumed) == ids_of(full)[4:]
        assert text_of(full).endswith(text_of(resumed))
        assert (resumed[-1].prompt_tokens, resumed[-1].completion_tokens) == (14, 6)
        everything = await collect(engine, request("m2", words(10), max_tokens=10, seed=9, resume=ids_of(full)))
        assert [(d.finish_reason, d.completion_tokens) for d in everything] == [("length", 0)]


@pytest.mark.asyncio
async def test_a_resumed_stream_sends_the_text_held_back_for_a_stop_string_and_matches_stops_across_the_boundary() -> None:
    async with sim(time_scale=0.0) as engine:
        plain = await collect(engine, request("p", max_tokens=12, seed=3))
        split = 5
        # A stop string that begins in the 5th word and ends in the 6th.
        w5, w6 = (d.text.strip() for d in plain[split - 1 : split + 1])
        stop = f"{w5[-1]} {w6[0]}"
        whole = await collect(engine, request("w", max_tokens=12, seed=3, stop=[stop]))
        assert whole[-1].finish_reason == "stop"
        # The client of a replica that died after `split` tokens got less text
        # than those tokens spell: the tail was held back for the stop string.
        sent = text_of(whole[:split])
        assert len(sent) < len(" ".join(d.text.strip() for d in plain[:split]))
        resumed = await collect(engine, request("r", max_tokens=12, seed=3, stop=[stop], resume=ids_of(whole[:split]), resume_text=sent))
        assert sent + text_of(resumed) == text_of(whole)
        assert resumed[-1].finish_reason == "stop"


def test_identical_prompt_prefixes_tokenize_to_identical_ids() -> None:
    base = tokenize("the quick brown fox")
    assert tokenize("the quick brown fox jumps over")[: len(base)] == base
    assert len(tokenize("abcdefgh")) == 2  # long words are cut into 4-character pieces
    msgs = [ChatMessage("system", "be brief"), ChatMessage("user", "hi")]
    assert render_chat(msgs) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    engine = SimEngine(SimParams(time_scale=0.0))
    chat = EngineRequest(request_id="c", sampling=Sampling(), messages=msgs)
    assert engine.prompt_token_ids(chat) == tokenize(render_chat(msgs))


# -- params ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"block_sise": 8}, "block_sise"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": 8.5}, "block_size"),
        ({"time_scale": "fast"}, "time_scale"),
        ({"decode_base_ms": -1}, "decode_base_ms"),
        ({"max_num_seqs": True}, "max_num_seqs"),
        ({"kv_capacity_blocks": 4, "max_model_len": 2048}, "kv_capacity_blocks"),
    ],
)
def test_an_unknown_or_bad_sim_params_key_is_rejected_by_name(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SimParams.from_dict(config)


def test_sim_params_from_dict_overrides_only_what_it_names() -> None:
    p = SimParams.from_dict({"decode_base_ms": 20, "max_num_seqs": 4})
    assert (p.decode_base_ms, p.max_num_seqs, p.block_size) == (20.0, 4, 16)
    assert isinstance(p.decode_base_ms, float)
    assert SimEngine({"time_scale": 0}).params.time_scale == 0.0


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
