"""Write docs/configuration.md from the config model (cluster/config.py): every field, its type, default and comment.

    python tools/gen_config_doc.py           # rewrite docs/configuration.md
    python tools/gen_config_doc.py --check   # exit 1 when the file is stale (tests/unit/test_config_doc.py)

Descriptions come from the ``#:`` comment lines right above each field in its model's source (cluster/config.py,
and the modules whose models it embeds), so the code stays the one place where a field is explained.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration

One YAML file configures the whole cluster (`llm-cluster up -c cluster.yaml`, and every other command that
takes `-c`). Every field has a default, so an empty file, or none, serves the embedded model on CPU. Any field
can be overridden on the command line with `--set path.to.field=value` (the value is parsed as YAML; models
are addressed by index: `--set models.0.replicas=2`). A bad value stops the command with one message naming
the field, e.g. `config field 'router.policy': unknown policy 'fastest'; choose one of ...`.

A complete example: [`examples/cluster.yaml`](../examples/cluster.yaml). This page is generated from
`cluster/config.py` by `python tools/gen_config_doc.py` (a test fails when it is stale).
"""


def field_comments(model: type) -> dict[str, str]:
    """Field name -> the ``#:`` comment lines right above it in the model's class body."""
    try:
        lines, _ = inspect.getsourcelines(model)
    except (OSError, TypeError):
        return {}
    src = textwrap.dedent("".join(lines))
    body = src.splitlines()
    out: dict[str, str] = {}
    cls = ast.parse(src).body[0]
    for stmt in getattr(cls, "body", []):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            comment: list[str] = []
            i = stmt.lineno - 2
            while i >= 0 and body[i].strip().startswith("#:"):
                comment.insert(0, body[i].strip()[2:].strip())
                i -= 1
            out[stmt.target.id] = " ".join(comment)
    return out


def type_name(t: object) -> str:
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "`") for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in typing.get_args(t))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(t))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if t is type(None):
        return "null"
    return getattr(t, "__name__", str(t))


def default_of(info: object) -> str:
    default = info.get_default(call_default_factory=True)  # type: ignore[attr-defined]
    if default is PydanticUndefined:
        return "required"
    if isinstance(default, BaseModel):
        return "(section)"
    if isinstance(default, list) and default and isinstance(default[0], BaseModel):
        return "one entry, defaults below"
    if default is None:
        return "`null`"
    return f"`{default!r}`".replace("'", '"') if not isinstance(default, str) else f'`"{default}"`'


def model_of(t: object) -> type[BaseModel] | None:
    if isinstance(t, type) and issubclass(t, BaseModel):
        return t
    for arg in typing.get_args(t):
        m = model_of(arg)
        if m is not None:
            return m
    return None


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from cluster.config import ClusterConfig

    sections: list[str] = [HEADER]

    def walk(model: type[BaseModel], path: str) -> None:
        comments = field_comments(model)
        rows = []
        nested: list[tuple[type[BaseModel], str]] = []
        for name, info in model.model_fields.items():
            sub = model_of(info.annotation)
            full = f"{path}.{name}" if path else name
            if sub is not None:
                is_list = typing.get_origin(info.annotation) is list
                nested.append((sub, f"{full}.N" if is_list else full))
            desc = comments.get(name, "")
            if sub is not None and not desc:
                desc = f"see `{full}{'.N' if typing.get_origin(info.annotation) is list else ''}` below"
            rows.append(f"| `{name}` | {type_name(info.annotation)} | {default_of(info)} | {desc} |")
        title = path or "top level"
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc.startswith("Usage docs:") or model.__doc__ == BaseModel.__doc__:
            doc = ""
        table = "| field | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
        sections.append(f"## `{title}`\n\n" + (f"{doc}\n\n" if doc else "") + table)
        for sub, sub_path in nested:
            walk(sub, sub_path)

    walk(ClusterConfig, "")
    return "\n".join(sections)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = p.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python tools/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
