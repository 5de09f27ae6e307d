"""The controller: desired replicas per model, and the replicas that make them real.

One named, detached Ray actor (``llm-cluster-controller``) per cluster.  It

- keeps the per-model state (:mod:`cluster.controller.state`: the desired
  replica count; ``set_replicas`` is the autoscaler's hook) and reconciles
  towards it in one loop;
- starts a replica as: placement group (cluster.replica.placement) -> replica
  actor in bundle 0 -> ``start()``, which returns the replica's gRPC address
  (:mod:`cluster.controller.launch`), giving it per-node slots for CPU cores
  and a metrics port (:mod:`cluster.controller.slots`);
- health-checks ready replicas every ``health_check_interval_s`` (each check
  may take ``health_check_timeout_s``); a replica whose actor died, or that
  failed ``health_check_failures`` checks in a row, leaves the endpoint set at
  once and is replaced;
- publishes the live endpoint set and each model's adapters as a versioned
  watch, and serves ``/metrics`` and ``/sd/replicas`` (:mod:`.discovery`);
- scales down by draining: the replica leaves the endpoint set first, then
  finishes its in-flight requests (bounded by ``drain_timeout_s``), then stops.

Each replica is a :class:`~cluster.controller.replica.Replica` record; every task
the controller starts is held by its record (or the loop's, by the controller).

Failure modes: if the controller itself dies, replicas and routers keep serving
with the last endpoint set; Ray restarts the controller (max_restarts=-1) and it
recovers the deployment without restarting anything healthy: the per-model
state comes back from Ray's internal KV store, the live replica actors are
adopted (:mod:`cluster.controller.adoption`), and endpoint-set versions start
from the wall clock.  What is not recovered: the per-node slots (adopted
replicas keep their cores and ports; new ones may be given overlapping ones).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import ray
from prometheus_client import CollectorRegistry

from cluster.config import ClusterConfig, ModelConfig
from cluster.controller import adapters, adoption, launch
from cluster.controller.discovery import ControllerCollector, Endpoints, EndpointWatch, endpoint_set, sd_targets, serve_metrics
from cluster.controller.replica import Replica, ReplicaState
from cluster.controller.slots import ReplicaSlots
from cluster.controller.state import ModelState, StateStore
from cluster.logs import setup_logging
from cluster.replica.placement import plan_placement

log = logging.getLogger(__name__)

CONTROLLER_NAME = "llm-cluster-controller"
#: The custom resource Ray gives only the head node.
HEAD_NODE_RESOURCE = "node:__internal_head__"
REPLICA_PREFIX = adoption.REPLICA_PREFIX
#: Time between leaving the endpoint set and refusing new requests, so routers
#: receive the new set before the replica starts saying UNAVAILABLE.
DRAIN_GRACE_S = 0.5

STARTING, READY, DRAINING, STOPPED, FAILED = ReplicaState  # in the order the enum declares them


class ControllerActor:
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging()
        self.config = ClusterConfig.model_validate(config)
        self.models: dict[str, ModelState] = {m.name: ModelState.from_config(m) for m in self.config.models}
        self._store = StateStore(ray.get_runtime_context().namespace)
        if ray.get_runtime_context().was_current_actor_reconstructed:
            self._store.restore(self.models)
        else:
            self._store.save(self.models)
        self.replicas: dict[str, Replica] = {}
        self._watch = EndpointWatch()
        self._loop_task: asyncio.Task[None] | None = None
        self._run_lock = asyncio.Lock()
        #: Held while an adapter is being loaded or unloaded, so the health check's re-sync does not undo it half-way.
        self._adapter_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._slots = ReplicaSlots(self.config.controller.replica_metrics_port)
        self._metrics_runner: Any = None
        self.metrics_port = 0
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(ControllerCollector(self._desired, lambda: self.replicas.values()))

    @property
    def version(self) -> int:
        return self._watch.version

    def _desired(self) -> dict[str, int]:
        return {name: m.desired for name, m in self.models.items()}

    def _model(self, name: str) -> ModelState:
        m = self.models.get(name)
        if m is None:
            raise ValueError(f"unknown model {name!r}")
        return m

    def _of_model(self, name: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.model == name]

    # ---- public API (Ray actor methods) ---------------------------------
    async def run(self) -> bool:
        """Start the reconcile loop (idempotent)."""
        async with self._run_lock:  # after a restart, several first calls race here
            if self._metrics_runner is None:
                runner, self.metrics_port = await serve_metrics(self._registry, self.config.controller.metrics_port, self.service_discovery)
                self._metrics_runner = runner if runner is not None else False
            if self._loop_task is None or self._loop_task.done():
                await self._adopt_live_replicas()
                self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="controller-reconcile")
        return True

    async def set_replicas(self, model: str, n: int) -> dict[str, int]:
        await self.run()
        m = self._model(model)
        if n < 0:
            raise ValueError("replica count must be >= 0")
        old, m.desired = m.desired, n
        self._store.save(self.models)
        log.info("desired replicas set", extra={"model": model, "from": old, "to": n})
        self._wake.set()
        return {"model": model, "desired": n, "previous": old}  # type: ignore[dict-item]

    async def replica_counts(self, model: str) -> dict[str, int]:
        """Desired and ready replicas of one model (cheap: no probes; the autoscaler's read)."""
        await self.run()
        m = self._model(model)
        return {"desired": m.desired, "ready": sum(r.state == READY for r in self._of_model(model))}

    async def watch(self, known_version: int, timeout_s: float = 30.0) -> tuple[int, Endpoints, dict[str, list[str]]]:
        """Long-poll: (version, endpoints, adapters per model, even at zero replicas) once past known_version or on timeout."""
        await self.run()  # after a Ray restart of this actor, the first call restarts the loop
        await self._watch.wait_past(known_version, timeout_s)
        return self.version, self.endpoints(), self.adapter_set()

    def adapter_set(self) -> dict[str, list[str]]:
        return {n: sorted(m.adapters) for n, m in self.models.items()}

    def endpoints(self) -> Endpoints:
        return endpoint_set(self.models, self.replicas.values())

    # ---- LoRA adapters (cluster.controller.adapters) ----------------------
    async def load_adapter(self, name: str, path: str, model: str | None = None) -> dict[str, Any]:
        """Load adapter ``name`` from ``path`` on every replica of its base model (all or nothing)."""
        await self.run()
        target = adapters.check_load(self.models, name, path, model)
        if isinstance(target, dict):
            return target
        base = target.config.name
        async with self._adapter_lock:
            if name in target.adapters:
                return {"ok": True, "status": 200, "model": base, "message": f"LoRA adapter '{name}' is already loaded."}
            ready = [r for r in self._of_model(base) if r.state == READY]
            refused = await adapters.load_everywhere(ready, name, path)
            if refused is not None:
                return refused
            target.adapters[name] = path
            self._store.save(self.models)
            self._publish()
        log.info("adapter loaded", extra={"adapter": name, "model": base, "replicas": len(ready)})
        return {"ok": True, "status": 200, "model": base, "message": f"Success: LoRA adapter '{name}' added successfully."}

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        await self.run()
        async with self._adapter_lock:
            owner = adapters.base_of(self.models, name)
            if owner is None:
                return adapters.error(404, f"The lora adapter '{name}' cannot be found.")
            del owner.adapters[name]
            self._store.save(self.models)
            self._publish()  # routers stop sending it before the replicas forget it
            await adapters.unload_everywhere([r for r in self._of_model(owner.config.name) if r.state.live], name)
        log.info("adapter unloaded", extra={"adapter": name, "model": owner.config.name})
        return {"ok": True, "status": 200, "model": owner.config.name, "message": f"Success: LoRA adapter '{name}' removed successfully."}

    async def list_adapters(self) -> dict[str, dict[str, str]]:
        """Adapters per base model: name -> path."""
        await self.run()
        return {n: dict(m.adapters) for n, m in self.models.items() if m.config.lora is not None}

    def service_discovery(self) -> list[dict[str, Any]]:
        """Prometheus HTTP SD: one target group per ready replica's metrics endpoint."""
        return sd_targets(self.replicas.values())

    async def status(self) -> dict[str, Any]:
        await self.run()
        ready = [r for r in self.replicas.values() if r.state == READY]
        await asyncio.gather(*(self._probe(r) for r in ready))  # fresh load figures, not the last check's
        models = {}
        for name, m in self.models.items():
            reps = self._of_model(name)
            models[name] = {
                "engine": m.config.engine,
                "desired": m.desired,
                "ready": sum(r.state == READY for r in reps),
                "max_model_len": max((r.max_model_len for r in reps), default=0),
            }
        reps_out = [r.summary() for r in sorted(self.replicas.values(), key=lambda r: r.replica_id)]
        return {"version": self.version, "models": models, "replicas": reps_out, "metrics_port": self.metrics_port}

    async def placement(self, replica_id: str) -> dict[str, Any]:
        """Where a replica's bundles landed (node id per bundle) and its strategy."""
        r = self.replicas[replica_id]
        if r.pg is None:
            return {}
        table = ray.util.placement_group_table(r.pg)
        return {"strategy": table["strategy"], "bundles_to_node_id": table["bundles_to_node_id"], "bundles": table["bundles"]}

    async def shutdown(self) -> None:
        """Stop every replica (no drain) and the loop; used by `llm-cluster down`."""
        if self._loop_task:
            self._loop_task.cancel()
        for m in self.models.values():
            m.desired = 0
        self._store.delete()
        await asyncio.gather(*(self._stop_replica(r, drain=False) for r in list(self.replicas.values())), return_exceptions=True)

    # ---- reconcile ---------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        interval = self.config.controller.health_check_interval_s
        while True:
            try:
                await self._check_health()
                self._reconcile()
            except Exception:  # the loop must outlive any one bad replica
                log.exception("reconcile step failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass

    def _reconcile(self) -> None:
        for name, m in self.models.items():
            live = [r for r in self._of_model(name) if r.state.live]
            if len(live) < m.desired:
                for _ in range(m.desired - len(live)):
                    self._launch(m.config)
            elif len(live) > m.desired:
                # Drop starting replicas first (they serve nothing yet), then the
                # ready ones with the fewest in-flight requests (cheapest drain).
                victims = sorted(live, key=lambda r: (r.state == READY, r.load.in_flight or 0, -r.started_at))
                for r in victims[: len(live) - m.desired]:
                    r.state = DRAINING
                    self._publish()
                    r.spawn(self._stop_replica(r, drain=True), "drain")

    def _launch(self, model: ModelConfig) -> None:
        rid = f"{model.name.replace('/', '_')}-{uuid.uuid4().hex[:8]}"
        r = Replica(replica_id=rid, model=model.name)
        self.replicas[rid] = r
        r.spawn(self._start_replica(r, model), "start")

    async def _start_replica(self, r: Replica, model: ModelConfig) -> None:
        plan = plan_placement(model)
        timeout = self.config.controller.start_timeout_s
        try:
            r.pg = launch.create_placement_group(r.replica_id, plan)
            await asyncio.wait_for(r.pg.ready(), timeout)
            r.node_id = launch.bundle_node(r.pg)
            env, metrics_port = self._slots.assign(r, model)
            r.actor = launch.create_replica_actor(r, model, plan, env, self.config.internal_tls.model_dump(), metrics_port)
            info = await asyncio.wait_for(r.actor.start.remote(), timeout)
            r.address = info["address"]
            r.relay_address = info.get("relay_address")
            r.metrics_address = info.get("metrics_address")
            r.max_model_len = info["max_model_len"]
            r.card = info.get("card") or {}
            if self.models[model.name].adapters:  # before it is routable: it must serve every adapter at once
                await adapters.sync(r, self.models[model.name].adapters)
            if r.state != STARTING:  # scaled down while starting
                return
            r.state = READY
            r.failures = 0
            log.info("replica ready", extra={"replica": r.replica_id, "model": r.model, "address": r.address, "node": r.node_id})
            self._publish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("replica failed to start", extra={"replica": r.replica_id, "error": repr(exc)[:500]})
            if r.state == STARTING:
                r.state = FAILED
            self._cleanup(r)

    # ---- health ------------------------------------------------------------
    async def _check_health(self) -> None:
        ready = [r for r in self.replicas.values() if r.state == READY]
        results = await asyncio.gather(*(self._probe(r) for r in ready))
        for r, ok in zip(ready, results, strict=True):
            if ok:
                r.failures = 0
                want = self.models[r.model].adapters if r.model in self.models else {}
                stale = r.adapters is not None and set(r.adapters) != set(want)
                if stale and not r.tasks and not self._adapter_lock.locked():
                    r.spawn(adapters.sync(r, want), "sync-adapters")
                continue
            r.failures += 1
            dead = r.failures >= self.config.controller.health_check_failures or r.dead
            if dead and r.state == READY:
                log.warning("replica unhealthy; replacing", extra={"replica": r.replica_id, "failures": r.failures})
                r.state = FAILED
                self._publish()
                self._cleanup(r)
        # Forget finished replicas so the table does not grow forever.
        for rid in [rid for rid, r in self.replicas.items() if r.forgettable]:
            del self.replicas[rid]

    async def _probe(self, r: Replica) -> bool:
        timeout = self.config.controller.health_check_timeout_s
        try:
            h = await asyncio.wait_for(r.actor.health.remote(), timeout)
        except ray.exceptions.RayActorError as exc:
            r.dead = True
            log.warning("replica actor died", extra={"replica": r.replica_id, "error": repr(exc)[:300]})
            return False
        except Exception as exc:
            why = f"no answer in {timeout} s" if isinstance(exc, TimeoutError) else repr(exc)[:300]
            log.warning("health check failed", extra={"replica": r.replica_id, "error": why, "failures": r.failures + 1})
            return False
        r.observe(h)
        return bool(h.get("ready"))

    # ---- stop --------------------------------------------------------------
    async def _stop_replica(self, r: Replica, drain: bool) -> None:
        cfg = self.config.controller
        if drain and r.actor is not None and r.address:
            await asyncio.sleep(DRAIN_GRACE_S)
            try:
                cut = await asyncio.wait_for(r.actor.drain.remote(cfg.drain_timeout_s), cfg.drain_timeout_s + 10)
                log.info("replica drained", extra={"replica": r.replica_id, "cut_off": cut})
            except Exception as exc:
                log.warning("drain failed", extra={"replica": r.replica_id, "error": repr(exc)[:300]})
        if r.actor is not None:
            try:
                await asyncio.wait_for(r.actor.stop.remote(), 30)
            except Exception:
                pass
        self._cleanup(r)
        r.state = STOPPED

    def _cleanup(self, r: Replica) -> None:
        """Free the replica's Ray objects and its slots."""
        launch.remove_replica(r)
        self._slots.release(r)

    def _publish(self) -> None:
        self._watch.bump()

    # ---- adoption ----------------------------------------------------------
    async def _adopt_live_replicas(self) -> None:
        """After a controller restart, keep serving with the replicas that survived (see cluster.controller.adoption)."""
        found = await adoption.find_live_replicas(self.models, self.replicas)
        for r in found:
            self.replicas[r.replica_id] = r
            if r.state == DRAINING:
                r.spawn(self._stop_replica(r, drain=True), "drain")
            elif r.state == STARTING:
                r.spawn(self._await_adopted_start(r), "await-start")
        adoption.remove_orphan_placement_groups(self.replicas)
        if any(r.state == READY for r in found):
            self._publish()

    async def _await_adopted_start(self, r: Replica) -> None:
        h = await adoption.wait_until_started(r, self.config.controller.start_timeout_s)
        if h is not None and r.state == STARTING:
            r.serve_from(h)
            r.state = READY
            self._publish()
        elif r.state == STARTING:
            log.error("adopted replica never became ready", extra={"replica": r.replica_id})
            r.state = FAILED
            self._cleanup(r)


def get_or_create_controller(config: ClusterConfig) -> Any:
    """The cluster's controller handle, creating the detached actor if absent."""
    try:
        return ray.get_actor(CONTROLLER_NAME)
    except ValueError:
        pass
    # On the head node: its metrics port (controller.metrics_port) is then at a known pod (the Ray head in
    # Kubernetes, where the chart scrapes it), and it lives as long as the cluster's GCS does anyway.
    handle = (
        ray.remote(ControllerActor)
        .options(
            name=CONTROLLER_NAME,
            lifetime="detached",
            num_cpus=0,
            resources={HEAD_NODE_RESOURCE: 0.001},
            max_concurrency=10000,
            max_restarts=-1,
            get_if_exists=True,
        )
        .remote(config.model_dump())
    )
    ray.get(handle.run.remote())
    return handle
