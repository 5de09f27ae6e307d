"""The LoRA adapters of each model, as the controller keeps them on its replicas.

The controller owns the set (:attr:`ModelState.adapters`, persisted with the
rest of the model's state, so it survives a controller restart).  A load is
all or nothing: it is checked first (LoRA on for the model, a free name, the
rank within ``max_lora_rank`` when the controller can read the adapter), then
pushed to every ready replica of the model at once; if any replica refuses it,
it is unloaded again from those that took it and the set is unchanged.  A
replica that starts later gets the whole set before it becomes ready, and the
health check re-pushes the set to a replica whose adapters differ from it
(e.g. one adopted after a restart, or one that missed a push).

Answers are plain dicts (``{"ok": bool, "status": int, "message": str, ...}``)
so that they cross Ray unchanged; ``status`` is the HTTP status the router
returns, as ``vllm serve`` would (400 bad adapter, 404 unknown, 409 taken).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.controller.replica import Replica
from cluster.controller.state import ModelState
from cluster.engine.sim.adapters import adapter_rank

log = logging.getLogger(__name__)

#: How long one replica may take to load an adapter (vLLM reads it from disk).
LOAD_TIMEOUT_S = 120.0


def error(status: int, message: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "message": message}


def base_of(models: Mapping[str, ModelState], name: str) -> ModelState | None:
    """The model serving adapter ``name``, if any."""
    return next((m for m in models.values() if name in m.adapters), None)


def check_load(models: Mapping[str, ModelState], name: str, path: str, model: str | None) -> ModelState | dict[str, Any]:
    """The model to load ``name`` onto, or the error answer."""
    if not name or not path:
        return error(400, "both lora_name and lora_path are required")
    if name in models:
        return error(400, f"lora_name {name!r} is the name of a model")
    owner = base_of(models, name)
    if owner is not None:
        if owner.adapters[name] == path and model in (None, owner.config.name):
            return owner  # loading the same adapter again is a no-op, as in vLLM
        return error(400, f"The lora adapter '{name}' has already been loaded.")
    with_lora = [m for m in models.values() if m.config.lora is not None]
    if model is not None:
        target = models.get(model)
        if target is None:
            return error(404, f"The model `{model}` does not exist.")
        if target.config.lora is None:
            return error(400, f"model {model!r} has LoRA off (set models[].lora in the config)")
    elif len(with_lora) == 1:
        target = with_lora[0]
    elif not with_lora:
        return error(400, "no model has LoRA on (set models[].lora in the config)")
    else:
        names = ", ".join(m.config.name for m in with_lora)
        return error(400, f"several models take adapters ({names}): name the base model in 'model'")
    assert target.config.lora is not None
    try:
        rank = adapter_rank(path)
    except ValueError as exc:
        return error(400, str(exc))
    limit = target.config.lora.max_lora_rank
    if rank is not None and rank > limit:
        return error(400, f"adapter {name!r} has rank {rank}, above max_lora_rank {limit} of model {target.config.name!r}")
    return target


async def load_everywhere(replicas: Sequence[Replica], name: str, path: str) -> dict[str, Any] | None:
    """Load on every replica, or on none: None when all took it, else the first refusal's error answer."""
    results = await asyncio.gather(*(_call(r, "load_adapter", name, path) for r in replicas))
    failed = [(r, res) for r, res in zip(replicas, results, strict=True) if not res.get("ok")]
    if not failed:
        return None
    took = [r for r, res in zip(replicas, results, strict=True) if res.get("ok")]
    await asyncio.gather(*(_call(r, "unload_adapter", name) for r in took))
    r, res = failed[0]
    log.warning("adapter load refused; rolled back", extra={"adapter": name, "replica": r.replica_id, "error": res.get("message")})
    return error(int(res.get("status") or 400), str(res.get("message")))


async def unload_everywhere(replicas: Sequence[Replica], name: str) -> None:
    await asyncio.gather(*(_call(r, "unload_adapter", name) for r in replicas))


async def sync(r: Replica, adapters: Mapping[str, str]) -> None:
    """Make the replica serve exactly ``adapters`` (errors are logged: the next health check retries)."""
    res = await _call(r, "set_adapters", dict(adapters))
    if not res.get("ok"):
        log.error("replica refused the model's adapters", extra={"replica": r.replica_id, "error": res.get("message")})


async def _call(r: Replica, method: str, *args: Any) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(getattr(r.actor, method).remote(*args), LOAD_TIMEOUT_S)
    except Exception as exc:  # a dead or slow replica: the health check deals with it
        return error(503, f"replica {r.replica_id}: {exc!r}"[:500])
