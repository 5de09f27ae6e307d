"""Cache-aware policies end to end: router + sim replicas with real prefix caches, over loopback."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.policy_fakes import system_prompt

pytestmark = pytest.mark.asyncio


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0)


async def _cached_fraction(router, sessions: int = 7, turns: int = 3) -> float:
    client = oai(router)
    await asyncio.sleep(0.3)  # first load reports: replicas are fresh
    cached = total = 0
    for turn in range(turns):
        rs = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="sim",
                    messages=[{"role": "system", "content": system_prompt(s % 3)}, {"role": "user", "content": f"turn {turn} of {s}"}],
                    max_tokens=2,
                    extra_headers={"x-session-id": f"s{s}"},
                )
                for s in range(sessions)
            )
        )
        # No details at all when nothing was cached (as vLLM answers).
        cached += sum(r.usage.prompt_tokens_details.cached_tokens if r.usage.prompt_tokens_details else 0 for r in rs)
        total += sum(r.usage.prompt_tokens for r in rs)
    return cached / total


@pytest.mark.parametrize("policy", ["prefix_aware", "session_affinity", "weighted"])
async def test_cache_aware_policies_hit_the_prefix_cache_more_than_round_robin(sim_fleet, policy):
    router = await sim_fleet.start(4, policy=policy)
    frac = await _cached_fraction(router)
    # 3 system prompts, 7 sessions of 3 turns over 4 replicas.  Round robin
    # (below) scatters every prompt over every replica: ~0.42 of prompt tokens
    # cached.  Prefix-aware keeps each system prompt on one replica (only its
    # first request misses: at most ~0.84); session affinity keeps each
    # conversation on one (each session's first turn may miss: >= ~0.65).
    assert frac > (0.6 if policy == "session_affinity" else 0.75), frac
    hits = router.metrics.value(
        "routing_decisions_total",
        {"model": "sim", "policy": policy, "outcome": "prefix_hit" if policy != "session_affinity" else "session_hit"},
    )
    assert hits >= 8


async def test_round_robin_baseline_misses_more(sim_fleet):
    router = await sim_fleet.start(4, policy="round_robin")
    frac = await _cached_fraction(router)
    assert frac < 0.55, frac


async def test_a_request_can_pick_its_policy_and_an_unknown_one_is_a_400(sim_fleet):
    router = await sim_fleet.start(2, policy="round_robin")
    client = oai(router)

    def decisions() -> float:
        return router.metrics.value("routing_decisions_total", {"model": "sim", "policy": "session_affinity", "outcome": "session_new"})

    assert decisions() == 0
    await client.completions.create(
        model="sim", prompt="hello", max_tokens=2, extra_headers={"x-routing-policy": "session_affinity", "x-session-id": "new-one"}
    )
    assert decisions() == 1
    with pytest.raises(openai.BadRequestError, match="x-routing-policy"):
        await client.completions.create(model="sim", prompt="hello", max_tokens=2, extra_headers={"x-routing-policy": "fastest"})
