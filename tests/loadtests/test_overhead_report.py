"""The router-overhead bench's round-by-round ratios: each round's systems are compared with each other, never a
round of one system with another round of the reference, and the spread shows a ratio that flips between rounds."""

from __future__ import annotations

import pytest

from loadtests.bench import overhead_report as rep


def _runs(per16_us: float, per256_us: float, requests: int = 100) -> dict[int, rep.Run]:
    """A 16- and a 256-token run whose CPU per stream is as given."""
    return {
        16: rep.Run(requests=requests, cpu_s=per16_us * requests / 1e6),
        256: rep.Run(requests=requests, cpu_s=per256_us * requests / 1e6),
    }


def _round(**systems: tuple[float, float]) -> rep.Runs:
    return {(s.replace("_", "-"), n): r for s, (a, b) in systems.items() for n, r in _runs(a, b).items()}


def test_a_ratio_is_taken_inside_each_round_against_vllm_router():
    # Round 2 is a slower machine for everyone: inside each round, ours costs half of vllm-router's.
    rounds = [_round(ours=(200, 2600), vllm_router=(400, 5200)), _round(ours=(600, 7800), vllm_router=(1200, 15600))]
    ratios = rep.by_round(["ours", "vllm-router"], rounds)
    assert set(ratios) == {"ours"}
    for figure in ("16-tok", "256-tok", "token", "request"):
        assert ratios["ours"][figure] == pytest.approx([0.5, 0.5])


def test_a_ratio_that_flips_between_rounds_shows_in_its_spread(capsys):
    # Per token 10 vs 10 in both rounds; per request 1.2x then 0.8x of vllm-router's.
    rounds = [_round(ours=(120 + 160, 120 + 2560), vllm_router=(100 + 160, 100 + 2560)),
              _round(ours=(80 + 160, 80 + 2560), vllm_router=(100 + 160, 100 + 2560))]  # fmt: skip
    ratios = rep.by_round(["ours", "vllm-router"], rounds)
    assert ratios["ours"]["token"] == pytest.approx([1.0, 1.0])
    assert ratios["ours"]["request"] == pytest.approx([1.2, 0.8])
    assert "0.80 / 1.00 / 1.20" in capsys.readouterr().out


def test_without_vllm_router_ratios_are_against_direct_and_one_round_gives_none():
    rounds = [_round(ours=(300, 3000), direct=(150, 1500)), _round(ours=(300, 3000), direct=(150, 1500))]
    assert rep.by_round(["direct", "ours"], rounds)["ours"]["16-tok"] == pytest.approx([2.0, 2.0])
    assert rep.by_round(["direct", "ours"], rounds[:1]) == {}


def test_summing_rounds_adds_every_field():
    total, one = rep.Run(), rep.Run(requests=3, tokens=48, cpu_s=0.5, sys_s=0.1, wall_s=5.0, ttft=[0.001], errors=1)
    total.add(one)
    total.add(one)
    assert (total.requests, total.tokens, total.cpu_s, total.sys_s, total.wall_s, total.errors) == (6, 96, 1.0, 0.2, 10.0, 2)
    assert total.ttft == [0.001, 0.001]
