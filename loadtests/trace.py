"""Trace files: record a run's schedule (``--record-trace``) and replay it (``--trace``).

A trace is JSON Lines, one request per line, in send order::

    {"t": 0.183, "prompt": "...", "prompt_tokens": 256, "output_tokens": 128, "session_id": null}
    {"t": 0.412, "messages": [{"role": "system", "content": "..."}, ...], "prompt_tokens": 600, "output_tokens": 64,
     "session_id": "s0-3-g1"}

- ``t``: send time in seconds from the start of the run (``timestamp`` in milliseconds is accepted too, as in
  Mooncake-style traces).
- the input: ``prompt`` (text) or ``messages`` (chat), or only ``prompt_tokens`` (alias ``input_length``), in
  which case synthetic words are made up for it (seeded by the line number, so a replay is stable).
- ``output_tokens`` (alias ``output_length``): sent as max_tokens; default 128.
- ``session_id``: optional; sent as the ``x-session-id`` header / metadata and the OpenAI ``user`` field.

A recorded trace holds the full text, so replaying it sends byte-identical requests at the same offsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.lengths import synthetic_text
from loadtests.workloads import RequestSpec

TraceRow = tuple[float, RequestSpec]


def to_record(t: float, spec: RequestSpec) -> dict[str, Any]:
    rec: dict[str, Any] = {"t": round(t, 6)}
    if spec.messages is not None:
        rec["messages"] = spec.messages
    else:
        rec["prompt"] = spec.prompt
    rec.update(prompt_tokens=spec.prompt_tokens, output_tokens=spec.output_tokens, session_id=spec.session_id)
    return rec


def write_trace(path: str | Path, rows: Iterable[TraceRow]) -> int:
    """Write rows as JSON Lines; returns how many."""
    n = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for t, spec in rows:
            f.write(json.dumps(to_record(t, spec), ensure_ascii=False) + "\n")
            n += 1
    return n


def from_record(rec: dict[str, Any], line_no: int, seed: int = 0) -> TraceRow:
    if "t" in rec:
        t = float(rec["t"])
    elif "timestamp" in rec:
        t = float(rec["timestamp"]) / 1000.0
    else:
        raise ValueError("needs 't' (seconds) or 'timestamp' (milliseconds)")
    out = int(rec.get("output_tokens", rec.get("output_length", 128)))
    n_in = rec.get("prompt_tokens", rec.get("input_length"))
    spec = RequestSpec(output_tokens=out, session_id=rec.get("session_id"))
    if isinstance(rec.get("messages"), list):
        spec.messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in rec["messages"]]
        spec.prompt_tokens = int(n_in) if n_in is not None else sum(len(m["content"].split()) for m in spec.messages)
    elif isinstance(rec.get("prompt"), str):
        spec.prompt = rec["prompt"]
        spec.prompt_tokens = int(n_in) if n_in is not None else len(spec.prompt.split())
    elif n_in is not None:
        spec.prompt_tokens = int(n_in)
        spec.prompt = synthetic_text(np.random.default_rng([seed, 4, line_no]), spec.prompt_tokens)
    else:
        raise ValueError("needs 'prompt', 'messages' or 'prompt_tokens'")
    if t < 0 or out < 1 or spec.prompt_tokens < 0:
        raise ValueError("t must be >= 0, output_tokens >= 1")
    return t, spec


def read_trace(path: str | Path, seed: int = 0) -> list[TraceRow]:
    """Read a trace; rows come back sorted by time.  ValueError names the bad line."""
    rows: list[TraceRow] = []
    with Path(path).open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                rows.append(from_record(rec, i, seed))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"trace {path}, line {i}: {exc}") from None
    rows.sort(key=lambda r: r[0])
    return rows
