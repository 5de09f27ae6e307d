"""The load generator's arithmetic: percentiles, goodput, SLO parsing (vLLM's definitions)."""

from __future__ import annotations

import pytest

from loadtests.clients.base import DROPPED, RequestResult
from loadtests.metrics import aggregate, dist_stats, is_good, latency_samples, parse_slo, peak_concurrency, percentile


def ok(index: int, ttft: float, e2e: float, tokens: int, start: float = 0.0, itl: list[float] | None = None) -> RequestResult:
    r = RequestResult(index=index, scheduled_s=start, start_s=start, ok=True, ttft_s=ttft, e2e_s=e2e, output_tokens=tokens)
    r.itl_s = list(itl or [])
    r.prompt_tokens = 10
    return r


def failed(index: int, kind: str = "http_503") -> RequestResult:
    r = RequestResult(index=index, scheduled_s=0.0)
    r.fail(kind, "x")
    return r


def test_percentiles_interpolate_linearly_like_numpy_and_vllm():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0


def test_distribution_stats_are_reported_in_milliseconds_and_null_without_samples():
    stats = dist_stats([0.1, 0.2, 0.3, 0.4], (50, 90))
    assert stats["count"] == 4
    assert stats["mean"] == pytest.approx(250.0)
    assert stats["p50"] == pytest.approx(250.0)
    assert stats["p90"] == pytest.approx(370.0)
    assert stats["max"] == pytest.approx(400.0)
    empty = dist_stats([], (99,))
    assert empty["count"] == 0 and empty["p99"] is None and empty["mean"] is None


def test_tpot_excludes_the_first_token_and_is_undefined_for_one_token_answers():
    assert ok(0, ttft=0.1, e2e=1.1, tokens=11).tpot_s == pytest.approx(0.1)
    assert ok(1, ttft=0.1, e2e=0.1, tokens=1).tpot_s is None


def test_goodput_counts_only_successful_requests_within_every_slo():
    results = [
        ok(0, ttft=0.2, e2e=1.2, tokens=11),  # tpot 0.1: good under tpot<=100ms
        ok(1, ttft=0.9, e2e=3.9, tokens=11),  # tpot 0.3: bad
        ok(2, ttft=1.5, e2e=2.5, tokens=11),  # ttft over 1 s: bad
        ok(3, ttft=0.5, e2e=0.5, tokens=1),  # one token: tpot counts as 0, good
        failed(4),
    ]
    slo = parse_slo("ttft=1s,tpot=100ms")
    assert [is_good(r, slo) for r in results] == [True, False, False, True, False]
    agg = aggregate(results, duration_s=2.0, slo=slo)
    assert agg.good == 2
    assert agg.goodput == pytest.approx(1.0)
    assert agg.completed == 4 and agg.failed == 1


def test_slo_limits_are_inclusive():
    assert is_good(ok(0, ttft=1.0, e2e=1.0, tokens=1), {"ttft": 1.0})


def test_throughput_uses_the_whole_benchmark_duration_and_successful_requests_only():
    results = [ok(i, ttft=0.1, e2e=1.0, tokens=100) for i in range(4)] + [failed(4), failed(5, DROPPED)]
    agg = aggregate(results, duration_s=4.0)
    assert agg.request_throughput == pytest.approx(1.0)
    assert agg.output_throughput == pytest.approx(100.0)
    assert agg.total_token_throughput == pytest.approx(110.0)
    assert (agg.failed, agg.dropped) == (1, 1)


def test_itl_is_pooled_over_requests_and_failed_requests_add_no_samples():
    results = [ok(0, 0.1, 0.4, 4, itl=[0.1, 0.1, 0.1]), ok(1, 0.1, 0.3, 3, itl=[0.05, 0.15]), failed(2)]
    samples = latency_samples(results)
    assert sorted(samples["itl"]) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.15])
    assert len(samples["ttft"]) == 2


def test_peak_concurrency_sweeps_request_intervals():
    results = [ok(0, 0.1, 1.0, 2, start=0.0), ok(1, 0.1, 1.0, 2, start=0.5), ok(2, 0.1, 1.0, 2, start=2.0)]
    assert peak_concurrency(results) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ttft=1s,tpot=50ms", {"ttft": 1.0, "tpot": 0.05}),
        ("ttft:500", {"ttft": 0.5}),  # vLLM's --goodput form: bare numbers are milliseconds
        ("e2el=2m", {"e2e": 120.0}),
    ],
)
def test_slo_strings_parse_to_seconds(text, expected):
    assert parse_slo(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "ttft", "speed=1s", "ttft=-1s", "ttft=fast"])
def test_bad_slo_strings_are_refused_with_a_message(text):
    with pytest.raises(ValueError, match=r"SLO|duration|empty"):
        parse_slo(text)
