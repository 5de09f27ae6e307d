"""Locust file for teams that already use Locust: OpenAI streaming chat, with TTFT as its own metric.

    locust -f loadtests/locustfile.py --host http://localhost:8000 --users 20 --spawn-rate 5 --run-time 2m --headless

Each task sends one streaming chat completion and reports two entries to Locust:

- ``POST /v1/chat/completions``: the whole request (response time = end-to-end latency; failures with the
  status or the in-stream error);
- ``TTFT``: time to the first content chunk, as its own request type, so Locust's percentile charts show it.

Environment: ``LLM_MODEL`` (default: the first model the server lists), ``LLM_PROMPT_WORDS`` (default 128),
``LLM_MAX_TOKENS`` (default 64), ``LLM_API_KEY`` (sent as a bearer token when set).  Locust users are a closed
loop; for open-loop arrivals and vLLM-comparable metrics use ``python -m loadtests run``.
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, events, task

from loadtests.lengths import synthetic_text

PROMPT_WORDS = int(os.environ.get("LLM_PROMPT_WORDS", "128"))
MAX_TOKENS = int(os.environ.get("LLM_MAX_TOKENS", "64"))


class ChatUser(HttpUser):
    wait_time = between(0.0, 0.5)
    model: str | None = os.environ.get("LLM_MODEL")

    def on_start(self) -> None:
        key = os.environ.get("LLM_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"
        if ChatUser.model is None:
            with self.client.get("/v1/models", name="GET /v1/models", catch_response=True) as resp:
                models = resp.json().get("data", []) if resp.status_code == 200 else []
                if not models:
                    resp.failure(f"no model listed (HTTP {resp.status_code})")
                    return
                ChatUser.model = models[0]["id"]
        import numpy as np

        self._rng = np.random.default_rng(random.randrange(1 << 30))

    @task
    def chat(self) -> None:
        if ChatUser.model is None:
            return
        body = {
            "model": ChatUser.model,
            "messages": [{"role": "user", "content": synthetic_text(self._rng, PROMPT_WORDS)}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
        }
        start = time.perf_counter()
        ttft: float | None = None
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True, name="POST /v1/chat/completions"
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            for line in resp.iter_lines():
                if not line or not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    resp.failure(f"stream error: {chunk['error'].get('message')}")
                    return
                choices = chunk.get("choices") or []
                if ttft is None and choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - start
            if ttft is None:
                resp.failure("the stream ended without content")
                return
            resp.success()
        events.request.fire(
            request_type="TTFT", name="first token", response_time=ttft * 1000, response_length=0, exception=None, context={}
        )
