"""Write the request schemas of the router's OpenAPI document from vLLM's own pydantic request models.

The router relays chat, completions, tokenize, detokenize and embeddings bodies to replicas that validate
them with vLLM's models (``ChatCompletionRequest``, ``CompletionRequest``, ``TokenizeRequest``,
``DetokenizeRequest``, ``EmbeddingRequest``; the LoRA admin routes take vLLM's
``(Un)LoadLoRAAdapterRequest``), so those models' JSON schemas are what ``GET /openapi.json`` publishes.
The router never imports vLLM: the schemas are generated here into ``cluster/router/openapi_vllm.json``
(committed; ``make openapi``), and ``tests/unit/test_openapi.py`` fails when they are stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "cluster" / "router" / "openapi_vllm.json"
REF = "#/components/schemas/{model}"


def schemas() -> dict[str, Any]:
    import vllm
    from pydantic import TypeAdapter
    from pydantic.json_schema import models_json_schema
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
    from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest

    classes = (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest)
    _, top = models_json_schema([(m, "validation") for m in classes], ref_template=REF)  # type: ignore[arg-type]
    defs = dict(top["$defs"])
    for name, union in (("TokenizeRequest", TokenizeRequest), ("EmbeddingRequest", EmbeddingRequest)):
        schema = TypeAdapter(union).json_schema(ref_template=REF)
        defs |= schema.pop("$defs", {})
        defs[name] = schema
    return {"vllm_version": vllm.__version__, "schemas": dict(sorted(defs.items()))}


def render() -> str:
    return json.dumps(schemas(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when the committed file is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python tools/gen_openapi.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
