"""Send one request to both servers and compare what a client sees.

Answers are compared whole, minus what differs between any two calls of the same server (ids, timestamps, the
system fingerprint, tool-call ids): content, tool calls, logprobs (tokens exactly, values within
:data:`LOGPROB_TOL`), finish and stop reasons, usage, and whatever else vLLM returns.  Streams are compared after
reassembly (content and tool-call arguments joined per choice, the usage chunk, the last finish reason), since
chunk boundaries are not part of the contract.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

#: Two CPU engines with the same thread count give the same logits to float rounding; bf16 leaves a little.
LOGPROB_TOL = 2e-2
#: Keys whose values differ between two calls of one server.
VOLATILE = {"id", "created", "system_fingerprint"}


@dataclass
class Answer:
    status: int
    body: Any  # parsed JSON (non-stream), or the list of parsed SSE events (stream)
    text: str = ""

    def error(self) -> dict:
        return self.body.get("error", self.body) if isinstance(self.body, dict) else {}


class Pair:
    """Blocking clients for the reference (``vllm serve``) and the cluster's router, used side by side."""

    def __init__(self, ref_url: str, cluster_url: str) -> None:
        self.ref_url, self.cluster_url = ref_url, cluster_url
        self.ref = httpx.Client(base_url=ref_url, timeout=300)
        self.cluster = httpx.Client(base_url=cluster_url, timeout=300)
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="parity-client")

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()
        self.ref.close()
        self.cluster.close()

    def reference(self, method: str, path: str, body: dict | None = None) -> Answer:
        """The request to vllm serve alone."""
        return _call(self.ref, method, path, body)

    def send(self, method: str, path: str, body: dict | None = None) -> tuple[Answer, Answer]:
        """The same request to both, concurrently (each engine has its own cores): (reference, cluster)."""
        a = self.pool.submit(_call, self.ref, method, path, body)
        b = self.pool.submit(_call, self.cluster, method, path, body)
        return a.result(), b.result()


def _call(client: httpx.Client, method: str, path: str, body: dict | None) -> Answer:
    if body is not None and body.get("stream"):
        with client.stream(method, path, json=body) as resp:
            if resp.status_code != 200:
                raw = resp.read().decode(errors="replace")
                return Answer(resp.status_code, _json(raw), raw)
            events = []
            for line in resp.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    events.append(json.loads(line[5:]))
            return Answer(200, events)
    resp = client.request(method, path, json=body)
    return Answer(resp.status_code, _json(resp.text), resp.text)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsed": text}


def normalised(body: Any) -> Any:
    """``body`` without what changes from call to call (ids, timestamps, tool-call ids)."""
    if isinstance(body, list):
        return [normalised(v) for v in body]
    if not isinstance(body, dict):
        return body
    out = {k: normalised(v) for k, v in body.items() if k not in VOLATILE}
    if body.get("type") == "function" and "function" in body:
        out.pop("id", None)
    return out


def reassembled(events: list[dict]) -> dict:
    """A stream as one answer: per choice the joined content / text / tool-call arguments, the concatenated
    logprobs and the last finish reason; plus the usages the stream carried (:func:`usage_summary`).

    Logprobs are joined list by list (chat ``content``; completions ``tokens``, ``token_logprobs``...), not
    chunk by chunk: how many tokens a server packs into one chunk depends on its timing, not on the answer."""
    choices: dict[int, dict] = {}
    usages = []
    for ev in events:
        if ev.get("usage"):
            usages.append(ev["usage"])
        for ch in ev.get("choices") or []:
            c = choices.setdefault(ch["index"], {"index": ch["index"], "text": "", "tool_calls": {}, "logprobs": {}})
            delta = ch.get("delta") or {}
            c["text"] += delta.get("content") or ch.get("text") or ""
            if delta.get("role"):
                c["role"] = delta["role"]
            for tc in delta.get("tool_calls") or []:
                t = c["tool_calls"].setdefault(tc.get("index", 0), {"name": "", "arguments": ""})
                fn = tc.get("function") or {}
                t["name"] += fn.get("name") or ""
                t["arguments"] += fn.get("arguments") or ""
            lp = ch.get("logprobs")
            if lp:
                for key, value in normalised(lp).items():
                    if isinstance(value, list):
                        c["logprobs"].setdefault(key, []).extend(value)
                    else:
                        c["logprobs"].setdefault(key, value)
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
                c["stop_reason"] = ch.get("stop_reason")
    for c in choices.values():
        c["tool_calls"] = [c["tool_calls"][i] for i in sorted(c["tool_calls"])]
    ordered = [choices[i] for i in sorted(choices)]
    return {"object": events[0].get("object") if events else None, "choices": ordered, "usages": usage_summary(usages)}


def usage_summary(usages: list[dict]) -> dict | None:
    """The usages of one stream as a client may rely on them: the last one; whether chunks before it carried
    usage too (``continuous_usage_stats``); whether those count up consistently (one prompt, totals that add
    up, completion tokens never going down).  Not how many there were: with per-chunk usage that is the number
    of chunks, which is timing (vLLM packs the tokens a slow reader has not taken yet into one chunk)."""
    if not usages:
        return None
    last, counts = usages[-1], [u.get("completion_tokens") or 0 for u in usages]
    consistent = counts == sorted(counts) and all(
        u.get("prompt_tokens") == last.get("prompt_tokens")
        and u.get("total_tokens") == (u.get("prompt_tokens") or 0) + (u.get("completion_tokens") or 0)
        for u in usages
    )
    return {"last": last, "continuous": len(usages) > 1, "consistent": consistent}


def assert_same(ref: Any, got: Any, path: str = "$") -> None:
    """Equal JSON, floats within :data:`LOGPROB_TOL` (logprobs of -inf/-9999 compare exactly)."""
    if isinstance(ref, dict) and isinstance(got, dict):
        missing, extra = ref.keys() - got.keys(), got.keys() - ref.keys()
        assert not missing and not extra, f"{path}: keys missing {sorted(missing)}, unexpected {sorted(extra)}"
        for k in ref:
            assert_same(ref[k], got[k], f"{path}.{k}")
    elif isinstance(ref, list) and isinstance(got, list):
        assert len(ref) == len(got), f"{path}: {len(got)} items, vllm serve has {len(ref)}: {got!r:.300} vs {ref!r:.300}"
        for i, (a, b) in enumerate(zip(ref, got, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(ref, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert math.isclose(ref, got, abs_tol=LOGPROB_TOL) or ref == got, f"{path}: {got} vs vllm serve's {ref}"
    else:
        assert ref == got, f"{path}: {got!r:.300} vs vllm serve's {ref!r:.300}"


def client_view(body: dict) -> dict:
    """What an application reads from an answer (non-stream, or a stream :func:`reassembled`): per choice the
    text, tool calls (name and arguments), finish reason and logprobs; the token counts."""
    choices = []
    for ch in body.get("choices") or []:
        msg = ch.get("message") or {}
        calls = msg.get("tool_calls") or ch.get("tool_calls") or []
        choices.append(
            {
                "index": ch.get("index"),
                "text": msg.get("content") if "message" in ch else ch.get("text"),
                "tool_calls": [
                    (c["function"]["name"], c["function"]["arguments"]) if "function" in c else (c["name"], c["arguments"]) for c in calls
                ],
                "finish_reason": ch.get("finish_reason"),
                "logprobs": normalised(ch.get("logprobs")) or None,
            }
        )
    usage = body.get("usage") or (body.get("usages") or {}).get("last") or {}
    return {"choices": choices, "usage": {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}


def view(answer: Answer) -> dict:
    """:func:`client_view` of a 200 answer, stream or not."""
    return client_view(reassembled(answer.body) if isinstance(answer.body, list) else answer.body)


def assert_same_answer(ref: Answer, got: Answer) -> None:
    """Same status; an error of the same type; or the same answer: first what an application reads (text, tool
    calls, logprobs, finish reason, token counts), then the whole body (streams reassembled)."""
    assert got.status == ref.status, f"status {got.status} vs vllm serve's {ref.status}: {got.text[:400]} | vllm: {ref.text[:400]}"
    if ref.status != 200:
        assert got.error().get("type") == ref.error().get("type"), f"error {got.error()} vs vllm serve's {ref.error()}"
        return
    if isinstance(ref.body, list):
        ref_body, got_body = reassembled(ref.body), reassembled(got.body)
    else:
        ref_body, got_body = normalised(ref.body), normalised(got.body)
    assert_same(client_view(ref_body), client_view(got_body), "view")
    assert_same(ref_body, got_body)
