"""The load generator against a sim cluster whose latencies are set: what it measures is what the sim was told.

Sim latency model (cluster/engine/sim/): TTFT = prefill + one decode step; then one token per step.  With
prefill 40 ms (no per-token cost) and steps of 10 ms, a lone request has TTFT 50 ms and TPOT 10 ms, and a
closed loop with one worker on one replica finishes a 16-token request every 50 + 15 x 10 = 200 ms.
"""

from __future__ import annotations

import json

import pytest

from loadtests.arrivals import ArrivalProcess, RateProfile
from loadtests.clients import make_client
from loadtests.lengths import parse_length
from loadtests.metrics import aggregate, latency_samples, percentile
from loadtests.report import RunInfo, build_result, write_outputs
from loadtests.runner import Runner, RunOptions, build_schedule
from loadtests.workloads import SyntheticWorkload

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

SIM = {"time_scale": 1.0, "prefill_base_ms": 40.0, "prefill_ms_per_token": 0.0, "decode_base_ms": 10.0, "decode_ms_per_seq": 0.0}
TTFT_S, STEP_S, OUT = 0.050, 0.010, 16


async def test_open_loop_ttft_and_tpot_match_the_simulated_latencies_over_http(sim_fleet, tmp_path):
    router = await sim_fleet.start(2, **SIM)
    workload = SyntheticWorkload(seed=0, input_len=parse_length("32"), output_len=parse_length(str(OUT)))
    schedule = build_schedule(workload, ArrivalProcess(RateProfile.constant(8.0)), seed=0, duration_s=4.0, num_requests=None)
    client = make_client(f"http://127.0.0.1:{router.http_port}", max_connections=64)
    outcome = await Runner(client, RunOptions(progress=False, request_timeout_s=30)).run(schedule=schedule)

    assert all(r.ok for r in outcome.results), [r.error_detail for r in outcome.results if not r.ok]
    samples = latency_samples(outcome.results)
    # A request may wait up to one step for the engine's current step to end; the rest is router + HTTP overhead.
    assert TTFT_S <= percentile(samples["ttft"], 50) <= TTFT_S + STEP_S + 0.030
    assert STEP_S * 0.95 <= percentile(samples["tpot"], 50) <= STEP_S * 1.6
    assert all(r.output_tokens == OUT for r in outcome.results)

    info = RunInfo("http", "http", "chat", "open-loop", "poisson", workload.describe(), 0, len(schedule), 4.0, {})
    result = build_result(info, outcome, slo={"ttft": 0.5})
    assert result["requests"]["completed"] == len(schedule)
    assert result["goodput"]["good_requests"] == len(schedule)
    files = write_outputs(tmp_path, result, outcome.results, plots=True)
    assert (tmp_path / "result.json").exists() and (tmp_path / "requests.jsonl").exists()
    assert set(files["plots"]) == {"latency_cdf.png", "timeline.png"} and all((tmp_path / p).stat().st_size > 1000 for p in files["plots"])
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["latency_ms"]["ttft"]["p50"] == pytest.approx(percentile(samples["ttft"], 50) * 1000)
    # The ready-replica count is sampled from the router's /healthz for the timeline.
    assert 2 in [n for _, n in outcome.replicas]


async def test_closed_loop_throughput_matches_the_simulated_step_time_over_grpc(sim_fleet):
    router = await sim_fleet.start(1, **SIM)
    workload = SyntheticWorkload(seed=1, input_len=parse_length("16"), output_len=parse_length(str(OUT)))
    client = make_client(f"grpc://127.0.0.1:{router.grpc_port}")
    opts = RunOptions(progress=False, concurrency=1, num_requests=15, request_timeout_s=30)
    outcome = await Runner(client, opts).run(requests=workload.requests())

    agg = aggregate(outcome.results, outcome.duration_s)
    per_request_s = TTFT_S + (OUT - 1) * STEP_S  # 0.2 s
    assert agg.completed == 15
    assert agg.request_throughput == pytest.approx(1 / per_request_s, rel=0.25)
    assert agg.output_throughput == pytest.approx(OUT / per_request_s, rel=0.25)
    # The sim reports usage, so output tokens are the engine's count, not a chunk count.
    assert agg.output_tokens == 15 * OUT
