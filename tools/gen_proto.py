"""Generate the Python gRPC stubs in cluster/proto/ from proto/llm_cluster/v1/*.proto.

The stubs are committed so that installing the package needs no protoc;
tests/unit/test_proto_stubs.py regenerates them into a temporary folder and
fails when the committed copies are stale.  Run `make proto` after editing a
.proto file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "cluster" / "proto"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted((PROTO_DIR / "llm_cluster" / "v1").glob("*.proto"))
    with_includes = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(with_includes) != 0:
        raise SystemExit("protoc failed")
    # protoc writes llm_cluster/v1/<name>_pb2*.py; flatten into out_dir and make
    # the cross-imports relative so the stubs live inside the cluster package.
    nested = out_dir / "llm_cluster" / "v1"
    written = []
    for src in sorted(nested.iterdir()):
        text = src.read_text()
        text = re.sub(r"^from llm_cluster\.v1 import (\w+)", r"from . import \1", text, flags=re.M)
        dst = out_dir / src.name
        dst.write_text(text)
        written.append(dst)
    for p in sorted(nested.iterdir()):
        p.unlink()
    nested.rmdir()
    (out_dir / "llm_cluster").rmdir()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: cluster/proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out.parent) if path.is_relative_to(args.out.parent) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
