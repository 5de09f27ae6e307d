"""The replica's prefix feed: the text keys of what the sim's prefix cache holds, evictions included."""

from cluster.common.chat import ChatMessage
from cluster.common.prefix_hash import routing_text, text_keys
from cluster.engine.base import EngineRequest, Sampling
from cluster.engine.sim import SimEngine, SimParams
from cluster.proto import replica_pb2
from cluster.replica.prefix_feed import attach_prefix_feed
from cluster.router.validation import relay_request
from tests.policy_fakes import system_prompt


def engine(blocks: int = 4096) -> SimEngine:
    return SimEngine(SimParams(time_scale=0.0, kv_capacity_blocks=blocks, max_model_len=2048, seed=1), model_name="sim")


async def run(eng: SimEngine, rid: str, prompt: str) -> None:
    async for _ in eng.generate(EngineRequest(rid, Sampling(max_tokens=2), prompt=prompt)):
        pass


async def test_a_served_prompts_text_keys_are_published_and_an_unserved_ones_are_not():
    eng = engine()
    feed = attach_prefix_feed(eng)
    assert feed is not None
    served, other = system_prompt(1), system_prompt(2)
    await run(eng, "a", served)
    keys = text_keys(served)
    assert len(keys) >= 10
    # Every full text block lies within the cached prompt blocks (the last may fall in the partial tail block).
    assert set(keys[:-1]) <= feed.held
    assert not set(text_keys(other)) & feed.held
    await eng.shutdown()


async def test_evicted_blocks_take_their_keys_out_of_the_feed_and_each_stream_sees_the_change_once():
    eng = engine(blocks=200)  # 3,200 tokens: a few 500-token prompts fill it
    feed = attach_prefix_feed(eng)
    first = system_prompt(0)
    await run(eng, "first", first)
    stream = feed.subscribe()
    report = replica_pb2.LoadReport()
    stream.fill(report)
    assert report.prefix_reset and set(text_keys(first)[:-1]) <= set(report.prefix_stored)
    for i in range(1, 12):  # newer prompts evict the first one's blocks
        await run(eng, f"p{i}", system_prompt(i))
    assert not set(text_keys(first)) & feed.held
    later = replica_pb2.LoadReport()
    stream.fill(later)
    assert not later.prefix_reset and set(text_keys(first)[:-1]) <= set(later.prefix_removed)
    again = replica_pb2.LoadReport()
    stream.fill(again)
    assert not again.prefix_stored and not again.prefix_removed
    await eng.shutdown()


def test_the_router_and_the_replica_compute_the_same_routing_text():
    msgs = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hello")]
    body = {"model": "m", "messages": [{"role": m.role, "content": m.content} for m in msgs]}
    assert relay_request("chat", body, models=["m"]).routing_text == routing_text(None, [m.content for m in msgs])
    assert relay_request("completions", {"model": "m", "prompt": "x y"}, models=["m"]).routing_text == routing_text("x y", None)


def test_text_keys_are_chained_and_the_same_in_every_process():
    import subprocess
    import sys

    a, b = system_prompt(3), system_prompt(3)[:1000] + "different tail" * 80
    ka, kb = text_keys(a), text_keys(b)
    shared = 1000 // 128
    assert ka[:shared] == kb[:shared] and ka[shared] != kb[shared]
    out = subprocess.run(
        [sys.executable, "-c", f"from cluster.common.prefix_hash import text_keys; print(text_keys({a!r})[-1])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == ka[-1]
