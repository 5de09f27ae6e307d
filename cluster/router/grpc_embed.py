"""gRPC ``Embed``: the OpenAI embeddings body it stands for, and the replica's JSON answer as an EmbedResponse.

The request is relayed as ``POST /v1/embeddings`` would be (the replica's engine answers with vLLM's pooling
layer, as JSON: ``encoding_format`` float), so both APIs route, limit and refuse alike.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.proto import inference_pb2
from cluster.router.validation import InvalidRequest


def embed_body(request: inference_pb2.EmbedRequest) -> dict[str, Any]:
    if bool(request.texts) == bool(request.token_ids):
        raise InvalidRequest("texts", "set exactly one of texts and token_ids (non-empty)")
    body: dict[str, Any] = {
        "model": request.model or None,
        "input": list(request.texts) if request.texts else [list(t.ids) for t in request.token_ids],
        "encoding_format": "float",
    }
    if body["model"] is None:
        del body["model"]
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    return body


def embed_response(data: bytes) -> inference_pb2.EmbedResponse:
    answer = json.loads(data)
    return inference_pb2.EmbedResponse(
        model=str(answer.get("model", "")),
        data=[inference_pb2.Embedding(index=int(d["index"]), values=d["embedding"]) for d in answer.get("data", [])],
        prompt_tokens=int((answer.get("usage") or {}).get("prompt_tokens") or 0),
    )
