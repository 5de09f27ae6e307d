"""An OpenAI request body, parsed strictly: what would break a parser further on is refused, naming the field.

A body that is not UTF-8, not JSON, not an object, nested deeper than
``MAX_DEPTH``, with a number too large for a 64-bit float (``1e400``,
``10**400``) or a lone surrogate raises :class:`InvalidRequest` (HTTP 400 /
INVALID_ARGUMENT).  The router's front ends and a replica's own HTTP API
parse bodies here, so both refuse alike.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: JSON nesting accepted (Python's own limit is near 1,000 and fails with RecursionError).
MAX_DEPTH = 64
#: Digits of an integer accepted (10**308 is near the largest float).
MAX_INT_DIGITS = 308


class InvalidRequest(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


class _Big(Exception):
    """A number too large for a float: the body is parsed again (:data:`_inf_decoder`), to name its field."""


def _int_or_big(s: str) -> int:
    if len(s) > MAX_INT_DIGITS:  # a sign counts: refused a digit early, then parsed again and judged exactly
        raise _Big
    return int(s)


def _float_or_big(s: str) -> float:
    v = float(s)
    if math.isinf(v):
        raise _Big
    return v


def _int_or_inf(s: str) -> int | float:
    return math.inf if len(s.lstrip("-")) > MAX_INT_DIGITS else int(s)


def _no_constant(name: str) -> float:
    raise InvalidRequest("body", f"{name} is not valid JSON")


#: One decoder for every body (building one per call costs more than a small body's parse); its hooks keep no
#: state, so it is safe from any thread.
_decoder = json.JSONDecoder(parse_int=_int_or_big, parse_float=_float_or_big, parse_constant=_no_constant)
#: The second parse, after :class:`_Big` only: a number beyond a float becomes inf (``float()`` makes one
#: itself), which :func:`check_values` then finds and names.
_inf_decoder = json.JSONDecoder(parse_int=_int_or_inf, parse_constant=_no_constant)
_scan, _space = _decoder.scan_once, json.decoder.WHITESPACE.match


def _decode(text: str) -> Any:
    """``_decoder.decode(text)`` without its two Python calls per body: its scanner, its errors."""
    try:
        value, end = _scan(text, _space(text, 0).end())
    except StopIteration as err:
        raise json.JSONDecodeError("Expecting value", text, err.value) from None
    end = _space(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def parse_body(raw: bytes) -> dict[str, Any]:
    """The client's JSON object; InvalidRequest naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("body", f"is not valid UTF-8 (byte {exc.start})") from None
    big = False
    try:
        try:
            body = _decode(text)
        except _Big:
            big = True
            body = _inf_decoder.decode(text)
    except RecursionError:
        raise InvalidRequest("body", "JSON nested too deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest("body", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    if big or b"\\u" in raw or raw.count(b"{") + raw.count(b"[") >= MAX_DEPTH:
        # Else nothing to find: no lone surrogate without a \u escape (the bytes are UTF-8), no deep
        # nesting with fewer brackets than the limit, no infinite number (no second parse).
        check_values(body, big)
    return body


def check_values(body: dict[str, Any], big: bool = False) -> None:
    """Refuse nesting beyond MAX_DEPTH, numbers beyond a float, lone surrogates; names the field."""
    stack: list[tuple[str, Any, int]] = [("", body, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                top = path.split("[", 1)[0].split(".", 1)[0]  # the field, not a 64-level path
                raise InvalidRequest(top or "body", f"is nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str) and not _encodable(k):
                    raise InvalidRequest(path or "body", "has a key that is not valid Unicode (lone surrogate)")
                if isinstance(v, dict | list | str) or (big and isinstance(v, float)):
                    stack.append((f"{path}.{k}" if isinstance(k, str) and path else f"{path}[{k}]" if path else str(k), v, depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(path, "is not a finite number (too large for a 64-bit float?)")
        elif isinstance(value, str) and not _encodable(value):
            raise InvalidRequest(path, "is not valid Unicode (lone surrogate)")


def _encodable(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
