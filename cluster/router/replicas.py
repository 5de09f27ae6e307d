"""The router's view of the replicas: one gRPC channel, one load stream and one relay pool each.

``ReplicaSet`` applies endpoint-set updates from an :class:`EndpointSource`
(the controller's watch, or a static list in tests and benchmarks): it opens a
channel to each new replica, subscribes to its pushed load reports, and closes
the channel of a replica that left (its in-flight streams finish first).
Requests go over the replica's relay stream (cluster/router/relay.py) when
``router.replica_transport`` is "relay" and the replica has one: at the
endpoint's ``relay_address``, or at the port its ``Health`` names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from cluster.config import InternalTLSConfig
from cluster.proto import replica_pb2, replica_pb2_grpc
from cluster.router.circuit import Circuit
from cluster.router.policies.base import STALE_AFTER_S, ModelLoad
from cluster.router.policies.published import PublishedPrefixes
from cluster.router.relay import LoadRefused, RelayError, RelayPool
from cluster.tls import relay_server_name, replica_channel_credentials, replica_client_ssl_context

log = logging.getLogger(__name__)

LOAD_INTERVAL_MS = 100


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port), the brackets of an IPv6 host dropped."""
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


Endpoints = dict[str, list[dict[str, str]]]
#: Each model's LoRA adapters, known with or without a ready replica (None: no adapters, e.g. a static set).
ModelAdapters = dict[str, list[str]] | None
EndpointSource = Callable[[int], Awaitable[tuple[int, Endpoints, ModelAdapters]]]


@dataclass(eq=False)
class ReplicaHandle:
    """One replica as this router holds it; policies see it as a read-only ``ReplicaView``."""

    replica_id: str
    model: str
    address: str
    channel: grpc.aio.Channel
    stub: replica_pb2_grpc.ReplicaStub
    #: Requests this router has in flight on the replica (its own count, exact).
    in_flight: int = 0
    #: Requests this router has sent to the replica, ever (attempts included).
    routed: int = 0
    load: replica_pb2.LoadReport | None = None
    load_at: float = 0.0
    removed: bool = False
    max_model_len: int = 0
    #: The model card the replica reported (vLLM's GET /v1/models ``root`` and ``parent``).
    root: str = ""
    parent: str = ""
    #: The model's totals, shared by its replicas (a private one until a ReplicaSet assigns it).
    group: ModelLoad = field(default_factory=ModelLoad, repr=False)
    #: The circuit breaker's state for this replica (cluster.router.circuit; only the breaker writes it).
    circuit: Circuit = field(default_factory=Circuit)
    #: Where this replica's published prefix keys go (the ReplicaSet's, shared by its policies).
    published: PublishedPrefixes | None = field(default=None, repr=False)
    #: The replica's relay stream (cluster/router/relay.py), once its Health named the port; None: the OpenAI RPC.
    relay: RelayPool | None = field(default=None, repr=False)
    #: Build the relay pool for a port the replica names (None: this router calls the OpenAI RPC only).
    relay_factory: Callable[[str, int], RelayPool] | None = field(default=None, repr=False)
    _load_task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def load_stale(self) -> bool:
        return time.monotonic() - self.load_at > STALE_AFTER_S

    @property
    def routable(self) -> bool:
        """Still in the endpoint set and not ejected by the circuit breaker."""
        return not self.removed and self.circuit.open_until <= time.monotonic()

    def begin(self) -> None:
        """One request of this router starts on the replica."""
        self.in_flight += 1
        self.routed += 1
        self.group.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1
        self.group.in_flight -= 1

    async def _find_relay(self) -> None:
        """Ask the replica for its relay port (Health) once per load-stream connection."""
        if self.relay_factory is None:
            return
        health = await self.stub.Health(replica_pb2.HealthRequest(), timeout=10)
        port = health.relay_port
        if not port:
            self._drop_relay()
        elif self.relay is None or self.relay.port != port:
            self._drop_relay()
            self.relay = self.relay_factory(split_address(self.address)[0], port)

    def _drop_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    async def _follow_load(self) -> None:
        """Keep ``load`` current from the replica's pushed reports; reconnect on errors.

        Over the replica's relay port when it has one (cluster/router/relay_load.py: a fraction of gRPC's
        cost per report); over gRPC's ``StreamLoad`` otherwise, and for a replica that refused the relay's
        load stream (one from before it), until that gRPC stream breaks (the replica may have been upgraded).
        """
        request = replica_pb2.LoadStreamRequest(interval_ms=LOAD_INTERVAL_MS)
        over_relay = True
        while not self.removed:
            try:
                await self._find_relay()
                if self.relay is not None and over_relay:
                    await self.relay.follow_load(request, self._take_load)
                else:
                    over_relay = True
                    async for report in self.stub.StreamLoad(request):
                        self._take_load(report)
            except asyncio.CancelledError:
                raise
            except LoadRefused:
                over_relay = False
                continue
            except (grpc.aio.AioRpcError, RelayError):
                pass
            await asyncio.sleep(0.5)

    def _take_load(self, report: replica_pb2.LoadReport) -> None:
        self.load = report
        self.load_at = time.monotonic()
        if report.prefix_block_bytes and self.published is not None:
            self.published.apply(self, report)

    async def close(self) -> None:
        self.removed = True
        if self._load_task:
            self._load_task.cancel()
        if self.published is not None:
            self.published.forget(self)
        # Let streams already relaying through this channel finish.
        deadline = time.monotonic() + 600
        while self.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 - a count, not an event
            await asyncio.sleep(0.1)
        self._drop_relay()
        await self.channel.close()


class ReplicaSet:
    def __init__(
        self, source: EndpointSource, tls: InternalTLSConfig | None = None, transport: str = "relay", pump: str = "native"
    ) -> None:
        self._source = source
        #: ``router.relay_pump``: the relay connections' frame split and pump in C ("native") or Python.
        self._pump = pump
        # Mutual TLS to the replicas (``internal_tls``); read once, shared by every channel.
        self._creds, self._tls_options = replica_channel_credentials(tls)
        self._tls = tls
        self._relay_ssl = replica_client_ssl_context(tls) if transport == "relay" else None
        #: ``router.replica_transport``: "relay" (a replica's relay stream when it has one) or "grpc".
        self.transport = transport
        self.by_model: dict[str, list[ReplicaHandle]] = {}
        self.by_id: dict[str, ReplicaHandle] = {}
        self.version = -1
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._bg: set[asyncio.Task] = set()
        self.models: set[str] = set()
        #: LoRA adapter -> its base model, from the endpoint set (the controller's adapter set).
        self.adapters: dict[str, str] = {}
        self.groups: dict[str, ModelLoad] = {}
        #: The prefix keys the replicas publish (one picture for every policy of this router).
        self.published = PublishedPrefixes()
        #: Called after every endpoint-set change (e.g. the admission queue's capacity grew).
        self.on_change: list[Callable[[], None]] = []

    def max_model_len(self, model: str) -> int:
        """The smallest known context length among the model's ready replicas (0: unknown)."""
        lens = [h.max_model_len for h in self.by_model.get(model, ()) if h.max_model_len > 0]
        return min(lens, default=0)

    async def start(self, wait_first: float = 10.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        try:
            await asyncio.wait_for(self._changed.wait(), wait_first)
        except TimeoutError:
            log.warning("no endpoint set yet from the controller")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for h in list(self.by_id.values()):
            h.removed = True
            if h._load_task:
                h._load_task.cancel()
            h._drop_relay()
            await h.channel.close()
        for t in self._bg:
            t.cancel()

    async def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (bounded) until ``done()`` holds after an endpoint-set update; its last value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def wait_for_replicas(self, model: str, timeout_s: float) -> list[ReplicaHandle]:
        deadline = time.monotonic() + timeout_s
        while True:
            reps = self.by_model.get(model)
            if reps:
                return reps
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return []

    async def _watch(self) -> None:
        while True:
            try:
                version, endpoints, model_adapters = await self._source(self.version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("endpoint watch failed; retrying", extra={"error": repr(exc)[:300]})
                await asyncio.sleep(1.0)
                continue
            if version != self.version:
                self.apply(version, endpoints, model_adapters)

    def apply(self, version: int, endpoints: Endpoints, model_adapters: ModelAdapters = None) -> None:
        seen: set[str] = set()
        by_model: dict[str, list[ReplicaHandle]] = {}
        adapters = {a: model for model, names in (model_adapters or {}).items() if model in endpoints for a in names}
        for model, eps in endpoints.items():
            handles = []
            for ep in eps:
                rid = ep["replica_id"]
                seen.add(rid)
                h = self.by_id.get(rid)
                if h is None or h.address != ep["address"]:
                    h = self._connect(rid, model, ep["address"], ep.get("relay_address"))
                    h.max_model_len = int(ep.get("max_model_len") or 0)
                    h.root = ep.get("root") or ""
                    h.parent = ep.get("parent") or ""
                    self.by_id[rid] = h
                handles.append(h)
            by_model[model] = handles
            group = self.groups.setdefault(model, ModelLoad())
            group.size = len(handles)
            for h in handles:
                if h.group is not group:
                    group.in_flight += h.in_flight
                    h.group = group
        for rid in [rid for rid in self.by_id if rid not in seen]:
            h = self.by_id.pop(rid)
            t = asyncio.get_running_loop().create_task(h.close())
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)
        for model in [m for m in self.groups if m not in by_model]:
            del self.groups[model]
        self.by_model = by_model
        self.models = set(endpoints)
        self.adapters = adapters
        self.version = version
        self._changed.set()
        for cb in self.on_change:
            cb()
        log.info("endpoint set updated", extra={"version": version, "replicas": {m: len(v) for m, v in by_model.items()}})

    def _connect(self, rid: str, model: str, address: str, relay_address: str | None = None) -> ReplicaHandle:
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            *self._tls_options,
        ]
        if self._creds is not None:
            channel = grpc.aio.secure_channel(address, self._creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=options)
        h = ReplicaHandle(rid, model, address, channel, replica_pb2_grpc.ReplicaStub(channel), published=self.published)
        if self.transport == "relay":
            if relay_address:  # where the endpoint set says (the controller's, or a test's proxy)
                h.relay = self._relay_pool(*split_address(relay_address))
            else:  # where the replica's Health says (e.g. `llm-cluster router --replica ADDR`)
                h.relay_factory = self._relay_pool
        h._load_task = asyncio.get_running_loop().create_task(h._follow_load())
        return h

    def _relay_pool(self, host: str, port: int) -> RelayPool:
        return RelayPool(host, port, self._relay_ssl, relay_server_name(self._tls, host), self._pump)


def static_source(endpoints: Endpoints) -> EndpointSource:
    """An endpoint source with a fixed set (tests, benchmarks, `llm-cluster router --replica`)."""

    async def source(known: int) -> tuple[int, Endpoints, ModelAdapters]:
        if known >= 1:
            await asyncio.Event().wait()  # never changes
        return 1, endpoints, None

    return source


def controller_source(controller: object, timeout_s: float = 30.0) -> EndpointSource:
    """Long-poll the controller actor's ``watch``."""

    async def source(known: int) -> tuple[int, Endpoints, ModelAdapters]:
        return await controller.watch.remote(known, timeout_s)  # type: ignore[attr-defined]

    return source
