"""Metrics as a scraper sees them: the replica's vllm:* series, the router's llm_cluster_router_*, every page's
process_* series, and the bounded queue that holds requests while a model has no ready replica."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.client import build_request
from cluster.config import RouterConfig
from cluster.engine.base import EngineRequest, Sampling
from cluster.engine.sim import SimEngine, SimParams
from cluster.metrics_server import start_metrics_server
from cluster.proto import inference_pb2_grpc
from cluster.replica.metrics import ReplicaMetrics
from cluster.router.app import Router
from cluster.router.replicas import static_source


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


async def test_a_sim_replica_exports_vllm_metrics_with_model_and_replica_labels():
    engine = SimEngine(SimParams(time_scale=0.05), model_name="m")
    metrics = ReplicaMetrics("m", "m-r1")
    metrics.watch_load(engine.load)
    engine.attach_metrics(metrics)
    runner, port = await start_metrics_server(metrics.registry, "127.0.0.1", 0)
    try:
        prompt = "one two three " * 20
        n = len(engine.tokenize(prompt))
        reqs = [EngineRequest(request_id=f"q{i}", sampling=Sampling(max_tokens=5), prompt=prompt) for i in range(3)]
        for r in reqs:
            async for _ in engine.generate(r):
                pass
        s = await scrape(port)
        labels = {"model": "m", "replica": "m-r1"}
        assert value(s, "vllm:time_to_first_token_seconds_count", **labels) == 3
        assert value(s, "vllm:inter_token_latency_seconds_count", **labels) == 3 * 4
        assert value(s, "vllm:e2e_request_latency_seconds_count", **labels) == 3
        assert value(s, "vllm:generation_tokens_total", **labels) == 15
        assert value(s, "vllm:prompt_tokens_total", **labels) == 3 * n
        # The same prompt three times: the 2nd and 3rd hit the prefix cache.
        assert value(s, "vllm:prefix_cache_hits_total", **labels) > 0
        assert value(s, "vllm:prefix_cache_queries_total", **labels) == 3 * n
        assert value(s, "vllm:num_requests_running", **labels) == 0
        assert ("vllm:kv_cache_usage_perc", tuple(sorted(labels.items()))) in s
        # Beside the registry's own series, the process's: its CPU so far, its memory, when it started.
        assert value(s, "process_cpu_seconds_total") > 0 and value(s, "process_resident_memory_bytes") > 2**20
        assert ("process_start_time_seconds", ()) in s
    finally:
        await runner.cleanup()
        await engine.shutdown()


async def test_the_router_counts_requests_by_code_and_times_them_on_its_own_port(sim_fleet):
    router = await sim_fleet.start(2)
    assert router.metrics_port not in (0, router.grpc_port, router.http_port)
    before = await scrape(router.metrics_port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for _ in range(3):
            [c async for c in stub.Generate(build_request("hello", model="sim", chat=True, max_tokens=4))]
        with pytest.raises(grpc.aio.AioRpcError):
            [c async for c in stub.Generate(build_request("hello", model="nope", chat=True, max_tokens=4))]
    async with aiohttp.ClientSession() as s:
        body = {"model": "sim", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
        async with s.post(f"http://127.0.0.1:{router.http_port}/v1/chat/completions", json=body) as r:
            assert r.status == 200
    after = await scrape(router.metrics_port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("llm_cluster_router_requests_total", model="sim", api="grpc", code="OK") == 3
    assert delta("llm_cluster_router_requests_total", model="unknown", api="grpc", code="NOT_FOUND") == 1
    assert delta("llm_cluster_router_requests_total", model="sim", api="http", code="200") == 1
    assert delta("llm_cluster_router_time_to_first_token_seconds_count", model="sim") == 4
    # The non-streamed HTTP answer arrives in one piece: no inter-token gap to time.
    assert delta("llm_cluster_router_inter_token_latency_seconds_count", model="sim") == 3 * 3
    assert delta("llm_cluster_router_e2e_request_latency_seconds_count", model="sim") == 4
    assert value(after, "llm_cluster_router_replicas_known", model="sim") == 2
    assert value(after, "llm_cluster_router_in_flight_requests", model="sim") == 0


async def test_requests_for_a_model_at_zero_replicas_wait_in_a_bounded_visible_queue_and_time_out_cleanly():
    cfg = RouterConfig(host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0, no_replica_wait_s=1.5, max_waiting_for_replica=2)
    router = Router(cfg, static_source({"sim": []}))
    await router.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)

            async def call() -> grpc.StatusCode:
                try:
                    [c async for c in stub.Generate(build_request("hi", model="sim", chat=True, max_tokens=2))]
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    return exc.code()

            waiting = [asyncio.create_task(call()) for _ in range(2)]
            await asyncio.sleep(0.5)
            s = await scrape(router.metrics_port)
            assert value(s, "llm_cluster_router_waiting_for_replica", model="sim") == 2  # demand visible at zero replicas
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await call() == grpc.StatusCode.UNAVAILABLE  # the queue is full: refused at once
            assert loop.time() - t0 < 1.0
            assert await asyncio.gather(*waiting) == [grpc.StatusCode.UNAVAILABLE] * 2  # timed out cleanly
            s = await scrape(router.metrics_port)
            assert value(s, "llm_cluster_router_waiting_for_replica", model="sim") == 0
            assert value(s, "llm_cluster_router_no_replica_total", model="sim", outcome="rejected_full") >= 1
            assert value(s, "llm_cluster_router_no_replica_total", model="sim", outcome="timeout") >= 2
    finally:
        await router.stop(0.5)
