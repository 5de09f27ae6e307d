"""Per-model state the controller owns, and where it outlives a controller restart.

:class:`ModelState` is what the controller decides per model: the desired
replica count (``set_replicas`` being the autoscaler's hook) and the LoRA
adapters its replicas serve (``load_adapter`` / ``unload_adapter``).  Every
change is written to Ray's internal KV store under the namespace's key, and a
restarted controller reads it back, so a decision survives the restart; a
controller created afresh starts from the config.  Losing a write only costs
that decision on a restart.  To persist a new per-model field, add it to
:class:`ModelState` and to its ``to_json`` / ``restore`` pair.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from ray.experimental import internal_kv

from cluster.config import ModelConfig

log = logging.getLogger(__name__)

#: Ray internal-KV key (per namespace) holding the per-model state.
STATE_KEY = "llm-cluster/{namespace}/desired"


@dataclass
class ModelState:
    config: ModelConfig
    desired: int
    #: LoRA adapters every replica of the model serves: name -> path (the config's, then run-time loads).
    adapters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ModelConfig) -> ModelState:
        adapters = {a.name: a.path for a in config.lora.adapters} if config.lora else {}
        return cls(config=config, desired=config.replicas, adapters=adapters)

    def to_json(self) -> dict[str, Any]:
        return {"desired": self.desired, "adapters": self.adapters}

    def restore(self, saved: Any) -> None:
        """Take back what :meth:`to_json` saved (a bare count: the earlier format); ignores what is malformed."""
        if isinstance(saved, int):
            saved = {"desired": saved}
        if not isinstance(saved, dict):
            return
        n = saved.get("desired")
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            self.desired = n
        adapters = saved.get("adapters")
        if self.config.lora is not None and isinstance(adapters, dict):
            self.adapters = {str(k): str(v) for k, v in adapters.items()}


class StateStore:
    """The models' state in Ray's internal KV store, one JSON document per namespace."""

    def __init__(self, namespace: str) -> None:
        self._key = STATE_KEY.format(namespace=namespace).encode()

    def save(self, models: dict[str, ModelState]) -> None:
        doc = {name: m.to_json() for name, m in models.items()}
        try:
            internal_kv._internal_kv_put(self._key, json.dumps(doc).encode(), overwrite=True)
        except Exception:  # losing this only costs the decisions on a restart
            log.warning("could not save the models' state", exc_info=True)

    def restore(self, models: dict[str, ModelState]) -> None:
        try:
            raw = internal_kv._internal_kv_get(self._key)
            saved = json.loads(raw) if raw else {}
        except Exception:
            log.warning("could not read the saved models' state; using the config's", exc_info=True)
            return
        if not isinstance(saved, dict):
            return
        for name, doc in saved.items():
            if name in models:
                models[name].restore(doc)
        log.info("models' state restored", extra={"desired": json.dumps({n: m.desired for n, m in models.items()})})

    def delete(self) -> None:
        try:
            internal_kv._internal_kv_del(self._key)
        except Exception:
            log.warning("could not delete the saved models' state", exc_info=True)
