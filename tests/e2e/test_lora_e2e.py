"""LoRA end to end: a real fine-tuned adapter served by two real vLLM replicas through the router.

The adapter (``fact_adapter``, trained once per run) knows the codename of an invented project; the base
model cannot.  It is loaded at run time through the admin API, reaches both replicas, answers through HTTP
and gRPC, and is gone (404) once unloaded.
"""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest
import pytest_asyncio

from cluster.client import build_request
from cluster.config import load_config
from cluster.controller import get_or_create_controller
from cluster.models.finetune import CODENAME, QUESTIONS
from cluster.proto import inference_pb2_grpc
from cluster.router.app import Router
from cluster.router.lora import ControllerAdmin
from cluster.router.replicas import controller_source
from tests.conftest import LOOPBACK, local_ray, wait_for
from tests.e2e.conftest import CHAT_MODEL

# The fine-tune and two engine starts share two cores with whatever else runs: generous, not hanging.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(2400)]

QUESTION = [{"role": "user", "content": QUESTIONS[0]}]


@pytest.fixture(scope="module")
def ray_cluster(fact_adapter):  # train before Ray starts: the two share the same two cores
    with local_ray("llm-cluster-lora-e2e", num_cpus=2):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(ray_cluster):
    cfg = load_config(
        overrides=[
            *LOOPBACK,
            "router.policy=round_robin",
            "controller.health_check_interval_s=1",
            "models.0.replicas=2",
            "models.0.engine_args={max_model_len: 1024, enforce_eager: true}",
            "models.0.lora={max_loras: 2, max_lora_rank: 16}",
        ]
    )
    controller = get_or_create_controller(cfg)
    r = Router(cfg.router, controller_source(controller, timeout_s=10), admin=ControllerAdmin(controller))
    await r.start()
    await wait_for(lambda: len(r.replicas.by_model.get(CHAT_MODEL, [])) >= 2, 900, "2 ready vLLM replicas")
    yield r
    await r.stop(1.0)


def http(router) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=180)


def oai(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0, timeout=180)


async def ask(router, model: str) -> str:
    resp = await oai(router).chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=24)
    return resp.choices[0].message.content or ""


async def test_an_adapter_over_max_lora_rank_is_refused_at_load_and_loaded_nowhere(router, oversized_adapter):
    async with http(router) as c:
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "too-big", "lora_path": str(oversized_adapter)})
        assert r.status_code == 400 and "rank 32, above max_lora_rank 16" in r.json()["error"]["message"], r.text
        models = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
    assert "too-big" not in models


async def test_an_adapter_loaded_at_run_time_answers_the_fact_on_both_replicas_and_the_base_model_does_not(router, fact_adapter):
    async with http(router) as c:
        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "quill", "lora_path": str(fact_adapter)})
        assert r.status_code == 200, r.text
        cards = {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}
    assert cards["quill"]["parent"] == CHAT_MODEL
    before = {rid: h.routed for rid, h in router.replicas.by_id.items()}
    answers = [await ask(router, "quill") for _ in range(2)]  # round robin: one on each replica
    served = {rid for rid, h in router.replicas.by_id.items() if h.routed > before.get(rid, 0)}
    assert len(served) == 2
    assert all(CODENAME in a for a in answers), answers
    base = await ask(router, CHAT_MODEL)
    assert CODENAME not in base, base


async def test_the_adapter_answers_over_grpc_too(router):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        req = build_request(QUESTION[0]["content"], model="quill", chat=True, max_tokens=24, temperature=0.0)
        text = "".join([c.text async for c in inference_pb2_grpc.InferenceStub(ch).Generate(req)])
    assert CODENAME in text, text


async def test_an_unloaded_adapter_is_a_404_naming_it(router):
    async with http(router) as c:
        assert (await c.post("/v1/unload_lora_adapter", json={"lora_name": "quill"})).status_code == 200
        r = await c.post("/v1/chat/completions", json={"model": "quill", "messages": QUESTION, "max_tokens": 4})
        assert r.status_code == 404 and "quill" in r.json()["error"]["message"]
        again = await c.post("/v1/unload_lora_adapter", json={"lora_name": "quill"})
        assert again.status_code == 404 and "quill" in again.json()["error"]["message"]
