"""The OpenAPI 3.0 schema of the router's HTTP API, served at ``GET /openapi.json``.

Written by hand to describe exactly what :mod:`http_server` and
:mod:`validation` accept (the schemathesis test holds the two together: every
generated request, valid or not, must get a documented 2xx/4xx, never a 5xx).
``models`` (the live model list) becomes the ``model`` field's enum, so
clients and fuzzers see which names are served.
"""

from __future__ import annotations

from typing import Any

from cluster.router.validation import MAX_TOKENS_CAP

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_SEED = (1 << 63) - 1
MAX_STOP = 16
MAX_MESSAGES = 4096

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "integer"},
            },
        }
    },
}

_USAGE = {
    "type": "object",
    "nullable": True,
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}


def _err(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"description": "seconds after which a retry can succeed", "schema": {"type": "integer"}}}


def _errors(body: bool) -> dict[str, Any]:
    out = {
        "401": _err("missing or invalid API key"),
        "429": _err("a tenant limit or the admission queue is full", _RETRY_AFTER),
    }
    if body:
        out |= {
            "400": _err("invalid request; the message names the parameter"),
            "404": _err("unknown model"),
            "413": _err("request body too large"),
            "503": _err("no ready replica"),
            "504": _err("deadline exceeded"),
        }
    return out


def _sampling() -> dict[str, Any]:
    return {
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_CAP, "nullable": True},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_CAP, "nullable": True},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
        "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "nullable": True},
        "top_k": {"type": "integer", "minimum": -1, "maximum": 1 << 20, "nullable": True},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "nullable": True},
        "stop": {
            "nullable": True,
            "oneOf": [
                {"type": "string", "minLength": 1, "maxLength": 256},
                {"type": "array", "maxItems": MAX_STOP, "items": {"type": "string", "minLength": 1, "maxLength": 256}},
            ],
        },
        "stream": {"type": "boolean", "nullable": True},
        "stream_options": {
            "type": "object",
            "nullable": True,
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "n": {"type": "integer", "enum": [1], "nullable": True},
        "user": {"type": "string"},
    }


def openapi_schema(models: list[str] | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"type": "string", "minLength": 1}
    if models:
        model["enum"] = sorted(models)
    text_part = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
    }
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": list(ROLES)},
            "content": {"nullable": True, "oneOf": [{"type": "string"}, {"type": "array", "items": text_part}]},
        },
    }
    chat_req = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": model,
            "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": message},
            **_sampling(),
        },
    }
    completion_req = {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": model,
            "prompt": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string", "minLength": 1}},
                ]
            },
            **_sampling(),
        },
    }
    choice = {"type": "object", "properties": {"index": {"type": "integer"}, "finish_reason": {"type": "string", "nullable": True}}}
    completion = {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion", "text_completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": choice},
            "usage": _USAGE,
        },
    }
    ok_completion = {
        "description": "the answer (JSON), or server-sent events when stream is true",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Completion"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    security = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "llm-cluster router (OpenAI-compatible)", "version": "1"},
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "security": security,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
                    },
                    "responses": {"200": ok_completion, **_errors(True)},
                }
            },
            "/v1/completions": {
                "post": {
                    "operationId": "createCompletion",
                    "security": security,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompletionRequest"}}},
                    },
                    "responses": {"200": ok_completion, **_errors(True)},
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "security": security,
                    "responses": {
                        "200": {
                            "description": "served models",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["object", "data"],
                                        "properties": {
                                            "object": {"type": "string"},
                                            "data": {
                                                "type": "array",
                                                "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        **_errors(False),
                    },
                }
            },
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "the router process is alive"}}}},
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {"200": {"description": "a replica is ready"}, "503": {"description": "no replica is ready"}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR, "ChatRequest": chat_req, "CompletionRequest": completion_req, "Completion": completion},
        },
    }
