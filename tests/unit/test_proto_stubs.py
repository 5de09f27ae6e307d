"""The committed gRPC stubs must match proto/: regenerate and compare."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_what_protoc_generates_now(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    written = mod.generate(tmp_path / "proto")
    assert written, "no stubs generated"
    for fresh in written:
        committed = ROOT / "cluster" / "proto" / fresh.name
        assert committed.exists(), f"{committed} missing: run `make proto`"
        assert committed.read_text() == fresh.read_text(), f"{committed.name} is stale: run `make proto`"
