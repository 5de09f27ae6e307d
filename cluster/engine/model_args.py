"""What a model entry's ``task`` and ``lora`` settings mean for each engine backend.

vLLM: ``task`` picks vLLM's runner (``embed`` -> the pooling runner, which also converts a
generative architecture into an embedding model; ``auto`` leaves vLLM to read the model's config,
as ``vllm serve`` does), and ``lora`` turns on ``enable_lora`` with its slot and rank limits.
Explicit ``engine_args`` win over both.  The sim: the same LoRA limits (:class:`AdapterLimits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cluster.engine.sim.adapters import AdapterLimits

if TYPE_CHECKING:
    from cluster.config import LoraConfig, ModelConfig


def vllm_engine_args(model: ModelConfig) -> dict[str, Any]:
    """``model.engine_args`` with what ``task`` and ``lora`` imply (the explicit args win)."""
    derived: dict[str, Any] = {}
    if model.task == "embed":
        derived["runner"] = "pooling"
    elif model.task == "generate":
        derived["runner"] = "generate"
    if model.lora is not None:
        derived |= {"enable_lora": True, "max_loras": model.lora.max_loras, "max_lora_rank": model.lora.max_lora_rank}
        if model.lora.max_cpu_loras is not None:
            derived["max_cpu_loras"] = model.lora.max_cpu_loras
    return derived | dict(model.engine_args)


def sim_adapter_limits(lora: LoraConfig | None) -> AdapterLimits | None:
    if lora is None:
        return None
    return AdapterLimits(max_loras=lora.max_loras, max_lora_rank=lora.max_lora_rank, max_cpu_loras=lora.max_cpu_loras)
