"""One client over several routers: requests spread round robin, or sticky by session.

What a load balancer in front of K router pods does: a plain Kubernetes
Service spreads connections (here: requests) without regard to content; a
session-affine one (``sticky``) keeps a session's turns on one router.
"""

from __future__ import annotations

import zlib

from loadtests.clients.base import Client, RequestResult
from loadtests.workloads import RequestSpec


class SpreadClient(Client):
    def __init__(self, clients: list[Client], *, sticky: bool = False) -> None:
        if not clients:
            raise ValueError("SpreadClient needs at least one client")
        self.clients = clients
        self.sticky = sticky
        self._next = 0

    @property  # type: ignore[override]
    def origin(self) -> float:
        return self.clients[0].origin

    @origin.setter
    def origin(self, value: float) -> None:
        for c in self.clients:
            c.origin = value

    async def open(self) -> None:
        for c in self.clients:
            await c.open()

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    async def models(self) -> list[str]:
        return await self.clients[0].models()

    async def ready_replicas(self, model: str | None) -> int | None:
        return await self.clients[0].ready_replicas(model)

    def pick(self, spec: RequestSpec) -> Client:
        if self.sticky and spec.session_id:
            return self.clients[zlib.crc32(spec.session_id.encode()) % len(self.clients)]
        c = self.clients[self._next % len(self.clients)]
        self._next += 1
        return c

    async def send(self, spec: RequestSpec, model: str, result: RequestResult) -> None:
        await self.pick(spec).send(spec, model, result)
