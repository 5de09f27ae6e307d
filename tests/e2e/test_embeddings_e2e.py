"""Embeddings end to end: all-MiniLM-L6-v2 (from its PyPI package) on a real vLLM replica through the router.

The vectors equal sentence-transformers' own on the same inputs (cosine >= 0.999); inputs as a string,
a list and token ids, float and base64 encodings, usage; bad input (over the model's 256 tokens, a chat
request, dimensions it cannot honour) is a 400 saying so.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import pytest_asyncio

from tests.conftest import LOOPBACK, local_ray, start_deployment
from tests.e2e.conftest import EMBED_MODEL

# The fine-tune and two engine starts share two cores with whatever else runs: generous, not hanging.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(2400)]

TEXTS = ["The cat sits on the mat.", "Retrieval keeps an organisation's documents in-house.", "Ein kurzer deutscher Satz."]


@pytest.fixture(scope="module")
def reference(embedding_model_dir) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir), device="cpu").encode(TEXTS)


@pytest.fixture(scope="module")
def ray_cluster(embedding_model_dir):
    with local_ray("llm-cluster-embed-e2e", num_cpus=2):
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(ray_cluster):
    _, _, r = await start_deployment(
        [
            *LOOPBACK,
            "controller.health_check_interval_s=1",
            f"models.0.name={EMBED_MODEL}",
            f"models.0.source=embedded:{EMBED_MODEL}",  # task left to auto: vLLM reads it from the model's config
            "models.0.engine_args={enforce_eager: true}",  # starts faster than compiled
        ],
        ready=1,
        timeout_s=900,
        watch_timeout_s=10,
    )
    yield r
    await r.stop(1.0)


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


async def embed(router, **body) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=120) as c:
        return await c.post("/v1/embeddings", json={"model": EMBED_MODEL, **body})


async def test_embeddings_of_a_list_equal_sentence_transformers_and_report_usage(router, reference):
    r = await embed(router, input=TEXTS)
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])
    assert got.shape == (3, 384)
    assert cos(got, reference).min() >= 0.999
    assert body["usage"]["prompt_tokens"] > 10 and body["model"] == EMBED_MODEL


async def test_a_string_in_base64_and_token_ids_give_the_same_vector(router, reference):
    r = await embed(router, input=TEXTS[0], encoding_format="base64")
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype=np.float32)
    assert cos(vec, reference[0]) >= 0.999
    from transformers import AutoTokenizer

    from cluster.models.prepare import prepare_embedded

    ids = AutoTokenizer.from_pretrained(str(prepare_embedded(EMBED_MODEL, progress=False)))(TEXTS[0])["input_ids"]
    r = await embed(router, input=[ids])
    assert r.status_code == 200, r.text
    assert cos(np.array(r.json()["data"][0]["embedding"]), reference[0]) >= 0.999


async def test_bad_embedding_requests_are_400s_saying_why(router):
    long = await embed(router, input="word " * 600)
    assert long.status_code == 400 and "256" in long.json()["error"]["message"]
    dims = await embed(router, input="hi", dimensions=64)
    assert dims.status_code == 400 and "dimensions" in dims.json()["error"]["message"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.http_port}", timeout=60) as c:
        chat = await c.post("/v1/chat/completions", json={"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "embedding model" in chat.json()["error"]["message"]


async def test_grpc_embed_gives_the_same_vectors_and_refuses_bad_input_with_invalid_argument(router, reference):
    import grpc

    from cluster.proto import inference_pb2, inference_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        resp = await stub.Embed(inference_pb2.EmbedRequest(model=EMBED_MODEL, texts=TEXTS))
        got = np.array([list(e.values) for e in sorted(resp.data, key=lambda e: e.index)])
        assert cos(got, reference).min() >= 0.999 and resp.prompt_tokens > 10
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Embed(inference_pb2.EmbedRequest(model=EMBED_MODEL, texts=["word " * 600]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "256" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Embed(inference_pb2.EmbedRequest(model=EMBED_MODEL))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "texts" in err.value.details()
