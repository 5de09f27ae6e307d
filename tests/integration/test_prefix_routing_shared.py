"""Prefix routing on what the replicas publish: every router sees the same cache, evictions included."""

import asyncio

import openai

from tests.conftest import wait_for
from tests.policy_fakes import system_prompt


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)


def holder(router) -> str:
    """The replica this router sent its requests to (the only one with traffic)."""
    busy = [rid for rid, h in router.replicas.by_id.items() if h.routed]
    assert len(busy) == 1, busy
    return busy[0]


async def test_a_second_router_sends_a_prefix_to_the_replica_another_router_cached_it_on(sim_fleet):
    a = await sim_fleet.start(4, policy="prefix_aware")
    b = await sim_fleet.another_router()
    prefix = system_prompt(7, 3000)
    await oai(a).completions.create(model="sim", prompt=prefix + " first question", max_tokens=2)
    home = holder(a)
    # The replica publishes the prefix on its next load report (every 100 ms) to every router.
    await wait_for(lambda: b.replicas.published.keys_of(b.replicas.by_id[home]) >= 20, 3.0, "the prefix published")
    for i in range(3):
        r = await oai(b).completions.create(model="sim", prompt=prefix + f" question {i}", max_tokens=2)
        assert r.usage.prompt_tokens_details.cached_tokens > 500  # a prefix-cache hit on the replica
    assert holder(b) == home  # router b never sent this prefix anywhere before
    assert b.metrics.value("routing_decisions_total", {"model": "sim", "policy": "prefix_aware", "outcome": "prefix_hit"}) == 3


async def test_a_router_stops_counting_on_a_prefix_the_replica_evicted(sim_fleet):
    # 240 blocks of 16 tokens per replica: a handful of 700-token prompts evict the oldest.
    router = await sim_fleet.start(1, policy="prefix_aware", kv_capacity_blocks=240)
    h = router.replicas.by_id["r0"]
    policy = router.balancer.policy
    old = system_prompt(1, 3000)
    await oai(router).completions.create(model="sim", prompt=old, max_tokens=2)
    keys = policy.index.hashes(old)
    await wait_for(lambda: router.replicas.published.keys_of(h) >= len(keys) - 1, 3.0, "the prefix published")
    assert policy.index.matches(keys).get(h, 0) >= len(keys) - 1
    for i in range(2, 8):  # other prompts fill the cache and evict the old one
        await oai(router).completions.create(model="sim", prompt=system_prompt(i, 3000), max_tokens=2)
    await asyncio.sleep(0.3)  # a load report or two
    assert policy.index.matches(keys).get(h, 0) == 0  # neither the published set nor the router's own record still has it
