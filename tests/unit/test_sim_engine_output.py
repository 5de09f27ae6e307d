"""The simulated engine's output: seeds, stop strings, tokenization, request validation, resumed streams, params."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.engine.base import ChatMessage, EngineRequest, EngineRequestError, Sampling
from cluster.engine.sim import SimEngine, SimParams, render_chat, tokenize
from tests.unit.sim_engine_helpers import collect, ids_of, request, sim, text_of, words

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
