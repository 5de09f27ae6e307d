"""A CPU replica's compile cache: what its first start compiled, a second start loads (vLLM's per-graph cache)."""

import pytest

pytest.importorskip("vllm")

from vllm import envs

from cluster.engine.vllm_backend import use_cpu_compile_cache


def test_a_cpu_replica_turns_off_the_aot_artifact_that_vllm_cpu_cannot_load_back(monkeypatch):
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert envs.use_aot_compile() is True  # vLLM's default on this torch: the artifact that fails to load
    environ: dict[str, str] = {}
    use_cpu_compile_cache(environ)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert envs.use_aot_compile() is False
    assert not envs.disable_compile_cache()


def test_the_compiled_graphs_are_kept_under_vllms_cache_root_not_in_tmp(monkeypatch, tmp_path):
    environ = {"VLLM_CACHE_ROOT": str(tmp_path)}
    use_cpu_compile_cache(environ)
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torch_compile_cache" / "inductor")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    environ = {}
    use_cpu_compile_cache(environ)
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / ".cache" / "vllm" / "torch_compile_cache" / "inductor")


def test_the_cache_moves_even_after_torch_wrote_its_tmp_default_into_the_environment(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    for key in ("TORCHINDUCTOR_CACHE_DIR", "VLLM_USE_AOT_COMPILE"):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    cache_dir()  # what importing vLLM does in the replica's process
    use_cpu_compile_cache()
    assert cache_dir() == str(tmp_path / "torch_compile_cache" / "inductor")  # what its engine processes inherit


def test_a_models_own_settings_of_the_compile_cache_are_kept():
    environ = {"VLLM_USE_AOT_COMPILE": "1", "TORCHINDUCTOR_CACHE_DIR": "/data/inductor"}
    use_cpu_compile_cache(environ)
    assert environ == {"VLLM_USE_AOT_COMPILE": "1", "TORCHINDUCTOR_CACHE_DIR": "/data/inductor"}
