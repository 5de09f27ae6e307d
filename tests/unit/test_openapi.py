"""GET /openapi.json publishes vLLM's own request schemas, generated from the installed vLLM and kept fresh."""

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.router.openapi import openapi_schema

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_request_schemas_are_those_of_the_installed_vllm():
    pytest.importorskip("vllm")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_openapi.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + "\nrun: python tools/gen_openapi.py"


def test_the_relayed_endpoints_take_vllms_request_bodies_with_the_served_models():
    doc = openapi_schema(["m1", "m2"])
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    for field in ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "logit_bias", "n", "min_p"):
        assert field in chat["properties"], field
    assert chat["properties"]["model"] == {"type": "string", "enum": ["m1", "m2"]}
    assert {"echo", "prompt", "logprobs"} <= set(schemas["CompletionRequest"]["properties"])
    assert set(doc["paths"]) >= {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/v1/models"}
    ref = doc["paths"]["/tokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in schemas
