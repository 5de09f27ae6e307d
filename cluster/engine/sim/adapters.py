"""LoRA adapters in the sim: registered adapters, a few active slots, and what a slot miss costs.

The model follows vLLM v1 (``LoRAConfig`` + ``Scheduler``):

- **Registered** adapters (loaded at start or with ``load_adapter``) may be
  requested; a request naming any other adapter is refused (404 upstream).
- **CPU cache** (``max_cpu_loras``): registered adapters whose weights are in
  host memory; the rest are on disk.  vLLM's LRU cache of adapters behind the
  slots; an adapter brought in from disk costs ``lora_disk_load_ms``.
- **Active slots** (``max_loras``): the adapters the batch may use.  A step's
  running requests use at most ``max_loras`` distinct adapters; a waiting
  request whose adapter is not in a slot, when every slot holds an adapter
  that a running request uses, is skipped (others behind it may be admitted,
  as vLLM's scheduler does).  Putting an adapter into a slot evicts the least
  recently used idle one, costs ``lora_load_ms`` of engine time in that step
  and counts one **swap** (the figure adapter-aware routing exists to lower).

Cost: O(max_loras) per admission.  Failure modes: none of its own; a rank over
``max_lora_rank`` (read from a real ``adapter_config.json`` when the path has
one) is refused at load, before anything is registered.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cluster.engine.base import EngineRequestError


@dataclass(frozen=True, slots=True)
class AdapterLimits:
    """vLLM's LoRA knobs, as the sim honours them."""

    max_loras: int = 2
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None


def adapter_rank(path: str) -> int | None:
    """The rank ``r`` in ``path``'s ``adapter_config.json``; None when the path holds none (a hub id, a sim name)."""
    config = Path(path).expanduser() / "adapter_config.json"
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EngineRequestError(f"adapter {path!r}: unreadable adapter_config.json ({exc})") from exc
    rank = data.get("r") if isinstance(data, dict) else None
    if not isinstance(rank, int) or rank < 1:
        raise EngineRequestError(f"adapter {path!r}: adapter_config.json has no valid rank 'r'")
    return rank


class AdapterSlots:
    """The registered adapters, the CPU cache and the active slots of one sim engine."""

    def __init__(self, limits: AdapterLimits, lora_load_ms: float, lora_disk_load_ms: float) -> None:
        self.limits = limits
        self.lora_load_ms = lora_load_ms
        self.lora_disk_load_ms = lora_disk_load_ms
        self.registered: dict[str, str] = {}  # name -> path
        self._cpu: OrderedDict[str, None] = OrderedDict()  # LRU: first = least recently used
        self._active: OrderedDict[str, None] = OrderedDict()
        self.swaps = 0  # adapters put into an active slot, cumulative
        self.disk_loads = 0

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._active)

    @property
    def cached(self) -> tuple[str, ...]:
        return tuple(self._cpu)

    def register(self, name: str, path: str) -> None:
        """Make ``name`` servable; a rank over ``max_lora_rank`` is refused before anything changes."""
        rank = adapter_rank(path)
        if rank is not None and rank > self.limits.max_lora_rank:
            raise EngineRequestError(f"adapter {name!r} has rank {rank}, above max_lora_rank {self.limits.max_lora_rank}")
        if name in self.registered and self.registered[name] != path:
            raise EngineRequestError(f"adapter {name!r} is already loaded from {self.registered[name]!r}")
        self.registered[name] = path

    def unregister(self, name: str) -> bool:
        found = self.registered.pop(name, None) is not None
        self._cpu.pop(name, None)
        self._active.pop(name, None)
        return found

    def check(self, name: str) -> None:
        if name not in self.registered:
            raise EngineRequestError(f"The model `{name}` does not exist.")

    def can_run(self, name: str | None, in_use: Iterable[str | None]) -> bool:
        """Whether a request for ``name`` fits the batch beside running requests using ``in_use``."""
        if name is None or name in self._active:
            return True
        busy = {a for a in in_use if a is not None}
        return len(self._active) < self.limits.max_loras or any(a not in busy for a in self._active)

    def activate(self, name: str | None, in_use: Iterable[str | None]) -> float:
        """Put ``name`` into a slot (call only when :meth:`can_run`); returns the engine time it costs, ms."""
        if name is None:
            return 0.0
        if name in self._active:
            self._active.move_to_end(name)
            self._touch_cpu(name)
            return 0.0
        if len(self._active) >= self.limits.max_loras:
            busy = {a for a in in_use if a is not None}
            victim = next(a for a in self._active if a not in busy)
            del self._active[victim]
        self._active[name] = None
        self.swaps += 1
        cost = self.lora_load_ms
        if name not in self._cpu:
            cost += self.lora_disk_load_ms
            self.disk_loads += 1
        self._touch_cpu(name)
        return cost

    def _touch_cpu(self, name: str) -> None:
        self._cpu[name] = None
        self._cpu.move_to_end(name)
        capacity = max(self.limits.max_cpu_loras or self.limits.max_loras, self.limits.max_loras)
        while len(self._cpu) > capacity:
            victim = next((a for a in self._cpu if a not in self._active), None)
            if victim is None:
                break
            del self._cpu[victim]
