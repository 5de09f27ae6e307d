"""A bounded map of sessions to the replica that served them last (not a policy).

Shared by the session-affinity and weighted policies: an LRU of
``max_sessions`` keys (model, session id), O(1) per lookup and update.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from cluster.router.policies.base import ReplicaView

R = TypeVar("R", bound=ReplicaView)


class SessionMap(Generic[R]):
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._map: OrderedDict[tuple[str, str], R] = OrderedDict()

    def get(self, key: tuple[str, str]) -> R | None:
        return self._map.get(key)

    def touch(self, key: tuple[str, str]) -> None:
        self._map.move_to_end(key)

    def remember(self, key: tuple[str, str], h: R) -> None:
        self._map[key] = h
        self._map.move_to_end(key)
        while len(self._map) > self.max_sessions:
            self._map.popitem(last=False)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map
