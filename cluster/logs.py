"""Structured logging: one JSON object per line, extra fields included."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process (LLM_CLUSTER_LOG_LEVEL, default INFO)."""
    root = logging.getLogger()
    if getattr(root, "_llm_cluster", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level or os.environ.get("LLM_CLUSTER_LOG_LEVEL", "INFO"))
    root._llm_cluster = True  # type: ignore[attr-defined]
    logging.Formatter.converter = time.gmtime
