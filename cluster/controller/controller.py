"""The controller: desired replicas per model, and the replicas that make them real.

One named, detached Ray actor (``llm-cluster-controller``) per cluster.  It

- keeps the desired replica count per model (``set_replicas`` is the
  autoscaler's hook) and reconciles towards it in one loop;
- starts a replica as: placement group (cluster.replica.placement) -> replica
  actor in bundle 0 -> ``start()``, which returns the replica's gRPC address;
- health-checks ready replicas every ``health_check_interval_s``; a replica
  whose actor died, or that failed ``health_check_failures`` checks in a row,
  leaves the endpoint set at once and is replaced;
- publishes the live endpoint set as a versioned watch (``watch``): a router
  long-polls it and gets an answer only when the set changes, so routers never
  ask the controller anything per request;
- scales down by draining: the replica leaves the endpoint set first, then
  finishes its in-flight requests (bounded by ``drain_timeout_s``), then stops;
- serves ``/metrics`` (desired / ready replicas per model) and ``/sd/replicas``
  (Prometheus HTTP service discovery of every ready replica's metrics address)
  on ``controller.metrics_port``.

Failure modes: if the controller itself dies, replicas and routers keep serving
with the last endpoint set; Ray restarts the controller (max_restarts=-1) and it
recovers the deployment without restarting anything healthy:

- the desired counts come back from Ray's internal KV store, where every
  ``set_replicas`` writes them (so an autoscaler's decision outlives the
  restart); a controller created afresh starts from the config instead;
- it adopts the live, named replica actors of its namespace: ready ones go
  straight back into the endpoint set, ones that were still starting are
  awaited, ones that were draining are drained and stopped;
- each adopted replica gets its placement group back by name (placement groups
  are detached, so they outlive the controller and its restarts), and groups
  with no live replica left are removed, so none leaks;
- endpoint-set versions start from the wall clock, so a router that saw the old
  controller's versions still gets the new set at once.
What is not recovered: the per-node CPU-core assignment of vLLM CPU replicas
(adopted replicas keep their cores; new ones may be given overlapping cores).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from ray.experimental import internal_kv
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import ClusterConfig, ModelConfig
from cluster.logs import setup_logging
from cluster.replica.placement import plan_placement

log = logging.getLogger(__name__)

CONTROLLER_NAME = "llm-cluster-controller"
#: The custom resource Ray gives only the head node.
HEAD_NODE_RESOURCE = "node:__internal_head__"
REPLICA_PREFIX = "llm-cluster-replica-"
#: Time between leaving the endpoint set and refusing new requests, so routers
#: receive the new set before the replica starts saying UNAVAILABLE.
DRAIN_GRACE_S = 0.5
#: Ray internal-KV key (per namespace) holding the desired replica counts.
STATE_KEY = "llm-cluster/{namespace}/desired"


@dataclass
class Replica:
    replica_id: str
    model: str
    actor: Any
    pg: PlacementGroup | None
    state: str = "STARTING"  # STARTING -> READY -> DRAINING -> STOPPED | FAILED
    address: str | None = None
    metrics_address: str | None = None
    failures: int = 0
    started_at: float = field(default_factory=time.time)
    node_id: str | None = None
    restarts: int = 0
    max_model_len: int = 0
    last_health: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task | None = None


class ControllerActor:
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging()
        self.config = ClusterConfig.model_validate(config)
        self.models: dict[str, ModelConfig] = {m.name: m for m in self.config.models}
        self.desired: dict[str, int] = {m.name: m.replicas for m in self.config.models}
        self._state_key = STATE_KEY.format(namespace=ray.get_runtime_context().namespace).encode()
        if ray.get_runtime_context().was_current_actor_reconstructed:
            self._restore_desired()
        else:
            self._save_desired()
        self.replicas: dict[str, Replica] = {}
        # Milliseconds of wall clock: a restarted controller's versions exceed the
        # ones routers saw from its previous life, so their watch answers at once.
        self.version = int(time.time() * 1000)
        self._changed = asyncio.Condition()
        self._loop_task: asyncio.Task | None = None
        self._run_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._cpu_slots: dict[str, set[int]] = {}
        self._metrics_slots: dict[str, set[int]] = {}
        self._metrics_runner: Any = None
        self.metrics_port = 0
        self._registry = CollectorRegistry(auto_describe=True)
        self._registry.register(_ControllerCollector(self))

    # ---- public API (Ray actor methods) ---------------------------------
    async def run(self) -> bool:
        """Start the reconcile loop (idempotent)."""
        async with self._run_lock:  # after a restart, several first calls race here
            if self._metrics_runner is None:
                await self._start_metrics()
            if self._loop_task is None or self._loop_task.done():
                await self._adopt_live_replicas()
                self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_loop())
        return True

    async def set_replicas(self, model: str, n: int) -> dict[str, int]:
        await self.run()
        if model not in self.models:
            raise ValueError(f"unknown model {model!r}")
        if n < 0:
            raise ValueError("replica count must be >= 0")
        old = self.desired[model]
        self.desired[model] = n
        self._save_desired()
        log.info("desired replicas set", extra={"model": model, "from": old, "to": n})
        self._wake.set()
        return {"model": model, "desired": n, "previous": old}  # type: ignore[dict-item]

    async def replica_counts(self, model: str) -> dict[str, int]:
        """Desired and ready replicas of one model (cheap: no probes; the autoscaler's read)."""
        await self.run()
        if model not in self.models:
            raise ValueError(f"unknown model {model!r}")
        reps = [r for r in self.replicas.values() if r.model == model]
        return {"desired": self.desired[model], "ready": sum(r.state == "READY" for r in reps)}

    async def watch(self, known_version: int, timeout_s: float = 30.0) -> tuple[int, dict[str, list[dict[str, str]]]]:
        """Long-poll: return (version, endpoints) once version > known_version or on timeout."""
        await self.run()  # after a Ray restart of this actor, the first call restarts the loop
        async with self._changed:
            # known_version > version: the router saw an earlier controller's set.
            if self.version == known_version:
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.version > known_version), timeout_s)
                except TimeoutError:
                    pass
            return self.version, self.endpoints()

    def endpoints(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {name: [] for name in self.models}
        for r in self.replicas.values():
            if r.state == "READY" and r.address:
                ep = {"replica_id": r.replica_id, "address": r.address, "max_model_len": str(r.max_model_len)}
                if r.metrics_address:
                    ep["metrics_address"] = r.metrics_address
                out[r.model].append(ep)
        for eps in out.values():
            eps.sort(key=lambda e: e["replica_id"])
        return out

    async def status(self) -> dict[str, Any]:
        await self.run()
        ready = [r for r in self.replicas.values() if r.state == "READY"]
        await asyncio.gather(*(self._probe(r) for r in ready))  # fresh load figures, not the last check's
        models = {}
        for name, m in self.models.items():
            reps = [r for r in self.replicas.values() if r.model == name]
            models[name] = {
                "engine": m.engine,
                "desired": self.desired[name],
                "ready": sum(r.state == "READY" for r in reps),
                "max_model_len": max((r.max_model_len for r in reps), default=0),
            }
        reps_out = [
            {
                "replica_id": r.replica_id,
                "model": r.model,
                "state": r.state,
                "address": r.address,
                "metrics_address": r.metrics_address,
                "node_id": r.node_id,
                "age_s": round(time.time() - r.started_at, 1),
                "restarts": r.restarts,
                **{k: r.last_health.get(k) for k in ("in_flight", "running", "waiting", "kv_cache_usage")},
            }
            for r in sorted(self.replicas.values(), key=lambda r: r.replica_id)
        ]
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
        for model in self.desired:
            self.desired[model] = 0
        try:
            internal_kv._internal_kv_del(self._state_key)
        except Exception:
            log.warning("could not delete the saved desired counts", exc_info=True)
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
        for name, want in self.desired.items():
            live = [r for r in self.replicas.values() if r.model == name and r.state in ("STARTING", "READY")]
            if len(live) < want:
                for _ in range(want - len(live)):
                    self._launch(self.models[name])
            elif len(live) > want:
                # Drop starting replicas first (they serve nothing yet), then the
                # ready ones with the fewest in-flight requests (cheapest drain).
                victims = sorted(live, key=lambda r: (r.state == "READY", r.last_health.get("in_flight", 0), -r.started_at))
                for r in victims[: len(live) - want]:
                    r.state = "DRAINING"
                    self._publish()
                    r.task = asyncio.get_running_loop().create_task(self._stop_replica(r, drain=True))

    def _launch(self, model: ModelConfig) -> None:
        rid = f"{model.name.replace('/', '_')}-{uuid.uuid4().hex[:8]}"
        r = Replica(replica_id=rid, model=model.name, actor=None, pg=None)
        self.replicas[rid] = r
        r.task = asyncio.get_running_loop().create_task(self._start_replica(r, model))

    async def _start_replica(self, r: Replica, model: ModelConfig) -> None:
        plan = plan_placement(model)
        try:
            # Detached: the group must outlive a restart of this actor, or Ray
            # would remove it, and the replica in it, with the old incarnation.
            r.pg = placement_group(plan.bundles, strategy=plan.strategy, name=f"{REPLICA_PREFIX}{r.replica_id}", lifetime="detached")
            await asyncio.wait_for(r.pg.ready(), self.config.controller.start_timeout_s)
            r.node_id = ray.util.placement_group_table(r.pg)["bundles_to_node_id"].get(0)
            env = dict(model.env)
            metrics_port = self._assign_metrics_port(r)
            if model.engine == "vllm" and model.num_gpus_per_shard == 0 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
                env["VLLM_CPU_OMP_THREADS_BIND"] = self._assign_cpu_cores(r, model)
            from cluster.replica.actor import ReplicaActor

            actor_cls = ray.remote(ReplicaActor)
            r.actor = actor_cls.options(
                name=f"{REPLICA_PREFIX}{r.replica_id}",
                namespace=ray.get_runtime_context().namespace,
                lifetime="detached",
                num_cpus=0,
                max_concurrency=1000,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=r.pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                ),
            ).remote(r.replica_id, model.model_dump(), plan.executor_backend, env, self.config.internal_tls.model_dump(), metrics_port)
            info = await asyncio.wait_for(r.actor.start.remote(), self.config.controller.start_timeout_s)
            r.address = info["address"]
            r.metrics_address = info.get("metrics_address")
            r.max_model_len = info["max_model_len"]
            if r.state != "STARTING":  # scaled down while starting
                return
            r.state = "READY"
            r.failures = 0
            log.info("replica ready", extra={"replica": r.replica_id, "model": r.model, "address": r.address, "node": r.node_id})
            self._publish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("replica failed to start", extra={"replica": r.replica_id, "error": repr(exc)[:500]})
            r.state = "FAILED"
            await self._cleanup(r)

    def _assign_cpu_cores(self, r: Replica, model: ModelConfig) -> str:
        """Give each vLLM CPU replica on a node its own cores.

        Without this every replica's OpenMP threads bind to core 0 and
        throughput halves.  Cores are handed out round-robin per node; shards of
        one replica are separated by '|', as vLLM expects.
        """
        node = r.node_id or "?"
        used = self._cpu_slots.setdefault(node, set())
        slot = next(i for i in range(len(used) + 1) if i not in used)
        used.add(slot)
        r.last_health["cpu_slot"] = slot
        ncpu = max(1, int(_node_cpus(node)))
        per = max(1, int(model.shard_cpus))
        cores = []
        for k in range(model.num_shards):
            first = ((slot * model.num_shards + k) * per) % ncpu
            cores.append(",".join(str((first + j) % ncpu) for j in range(per)) if per > 1 else str(first))
        return "|".join(cores)

    def _assign_metrics_port(self, r: Replica) -> int:
        """0 (ephemeral), or ``replica_metrics_port`` + the replica's slot on its node."""
        base = self.config.controller.replica_metrics_port
        if base == 0:
            return 0
        used = self._metrics_slots.setdefault(r.node_id or "?", set())
        slot = next(i for i in range(len(used) + 1) if i not in used)
        used.add(slot)
        r.last_health["metrics_slot"] = slot
        return base + slot

    async def _start_metrics(self) -> None:
        from aiohttp import web

        from cluster.metrics_server import start_metrics_server

        async def sd(request: web.Request) -> web.Response:
            return web.json_response(self.service_discovery())

        try:
            self._metrics_runner, self.metrics_port = await start_metrics_server(
                self._registry, "0.0.0.0", self.config.controller.metrics_port, {"/sd/replicas": sd}
            )
            log.info("controller metrics serving", extra={"metrics_port": self.metrics_port})
        except OSError as exc:
            # A busy port must not stop the control plane; the cluster serves without controller metrics.
            self._metrics_runner = False
            log.error("controller metrics port unavailable", extra={"port": self.config.controller.metrics_port, "error": str(exc)})

    def service_discovery(self) -> list[dict[str, Any]]:
        """Prometheus HTTP SD: one target group per ready replica's metrics endpoint."""
        return [
            {"targets": [r.metrics_address], "labels": {"model": r.model, "replica": r.replica_id}}
            for r in sorted(self.replicas.values(), key=lambda r: r.replica_id)
            if r.state == "READY" and r.metrics_address
        ]

    async def _check_health(self) -> None:
        ready = [r for r in self.replicas.values() if r.state == "READY"]
        results = await asyncio.gather(*(self._probe(r) for r in ready))
        for r, ok in zip(ready, results, strict=True):
            if ok:
                r.failures = 0
                continue
            r.failures += 1
            dead = r.failures >= self.config.controller.health_check_failures or r.last_health.get("dead")
            if dead and r.state == "READY":
                log.warning("replica unhealthy; replacing", extra={"replica": r.replica_id, "failures": r.failures})
                r.state = "FAILED"
                self._publish()
                r.task = asyncio.get_running_loop().create_task(self._cleanup(r))
        # Forget finished replicas so the table does not grow forever.
        for rid in [rid for rid, r in self.replicas.items() if r.state in ("STOPPED", "FAILED") and (r.task is None or r.task.done())]:
            del self.replicas[rid]

    async def _probe(self, r: Replica) -> bool:
        timeout = max(1.0, self.config.controller.health_check_interval_s)
        try:
            h = await asyncio.wait_for(r.actor.health.remote(), timeout)
        except ray.exceptions.RayActorError:
            r.last_health["dead"] = True
            return False
        except Exception:
            return False
        keep = {k: r.last_health[k] for k in ("cpu_slot", "metrics_slot") if k in r.last_health}
        r.last_health = h | keep
        return bool(h.get("ready"))

    async def _stop_replica(self, r: Replica, drain: bool) -> None:
        if drain and r.actor is not None and r.address:
            await asyncio.sleep(DRAIN_GRACE_S)
            try:
                cut = await asyncio.wait_for(
                    r.actor.drain.remote(self.config.controller.drain_timeout_s), self.config.controller.drain_timeout_s + 10
                )
                log.info("replica drained", extra={"replica": r.replica_id, "cut_off": cut})
            except Exception as exc:
                log.warning("drain failed", extra={"replica": r.replica_id, "error": repr(exc)[:300]})
        if r.actor is not None:
            try:
                await asyncio.wait_for(r.actor.stop.remote(), 30)
            except Exception:
                pass
        await self._cleanup(r)
        r.state = "STOPPED"

    async def _cleanup(self, r: Replica) -> None:
        if r.actor is not None:
            try:
                ray.kill(r.actor, no_restart=True)
            except Exception:
                pass
        if r.pg is not None:
            try:
                remove_placement_group(r.pg)
            except Exception:
                pass
        slot = r.last_health.get("cpu_slot")
        if slot is not None and r.node_id in self._cpu_slots:
            self._cpu_slots[r.node_id].discard(slot)
        mslot = r.last_health.get("metrics_slot")
        if mslot is not None:
            self._metrics_slots.get(r.node_id or "?", set()).discard(mslot)

    def _publish(self) -> None:
        self.version += 1

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _save_desired(self) -> None:
        try:
            internal_kv._internal_kv_put(self._state_key, json.dumps(self.desired).encode(), overwrite=True)
        except Exception:  # losing this only costs the counts on a restart
            log.warning("could not save the desired counts", exc_info=True)

    def _restore_desired(self) -> None:
        try:
            raw = internal_kv._internal_kv_get(self._state_key)
            saved = json.loads(raw) if raw else {}
        except Exception:
            log.warning("could not read the saved desired counts; using the config's", exc_info=True)
            return
        for model, n in saved.items():
            if model in self.desired and isinstance(n, int) and n >= 0:
                self.desired[model] = n
        log.info("desired counts restored", extra={"desired": json.dumps(self.desired)})

    async def _adopt_live_replicas(self) -> None:
        """After a controller restart, keep serving with the replicas that survived.

        Ready replicas are adopted as they are; one that was still starting is
        awaited; one that was draining is drained and stopped.  Each gets its
        placement group back, and groups left without a replica are removed.
        """
        try:
            names = [n for n in ray.util.list_named_actors() if n.startswith(REPLICA_PREFIX)]
        except Exception:
            log.warning("cannot list named actors; adopting nothing", exc_info=True)
            names = []
        adopted = await asyncio.gather(*(self._adopt(name) for name in names))
        self._remove_orphan_placement_groups()
        if any(adopted):
            self._publish()

    async def _adopt(self, name: str) -> bool:
        rid = name.removeprefix(REPLICA_PREFIX)
        if rid in self.replicas:
            return False
        try:
            actor = ray.get_actor(name)
            h = await asyncio.wait_for(actor.health.remote(), 10)
        except Exception as exc:
            # Dead or wedged: it serves nothing; free its resources.
            log.warning("replica found dead at adoption; removing it", extra={"replica": rid, "error": repr(exc)[:300]})
            self._kill_orphan(name)
            return False
        model = h.get("model") or rid.rsplit("-", 1)[0]
        if model not in self.models:
            log.warning("replica of a model not in the config; removing it", extra={"replica": rid, "model": model})
            self._kill_orphan(name)
            return False
        r = Replica(replica_id=rid, model=model, actor=actor, pg=_placement_group_named(name), address=h.get("address"))
        r.metrics_address = h.get("metrics_address")
        r.max_model_len = int(h.get("max_model_len") or 0)
        r.last_health = h
        r.node_id = h.get("node_id")
        r.started_at = float(h.get("started_at") or r.started_at)
        self.replicas[rid] = r
        loop = asyncio.get_running_loop()
        if h.get("ready"):
            r.state = "READY"
        elif h.get("draining"):
            r.state = "DRAINING"  # the previous controller was scaling it down
            r.task = loop.create_task(self._stop_replica(r, drain=True))
        else:
            r.state = "STARTING"  # the previous controller's start() call still runs in the actor
            r.task = loop.create_task(self._await_adopted_start(r))
        log.info("adopted live replica", extra={"replica": rid, "state": r.state, "placement_group": r.pg is not None})
        return r.state == "READY"

    async def _await_adopted_start(self, r: Replica) -> None:
        deadline = time.monotonic() + self.config.controller.start_timeout_s
        while r.state == "STARTING" and time.monotonic() < deadline:
            try:
                h = await asyncio.wait_for(r.actor.health.remote(), 10)
            except Exception:
                break
            if h.get("ready"):
                r.state, r.address, r.last_health = "READY", h.get("address"), h
                r.metrics_address = h.get("metrics_address")
                r.max_model_len = int(h.get("max_model_len") or 0)
                self._publish()
                return
            await asyncio.sleep(0.5)
        if r.state == "STARTING":
            log.error("adopted replica never became ready", extra={"replica": r.replica_id})
            r.state = "FAILED"
            await self._cleanup(r)

    def _kill_orphan(self, name: str) -> None:
        try:
            ray.kill(ray.get_actor(name), no_restart=True)
        except Exception:
            pass
        pg = _placement_group_named(name)
        if pg is not None:
            remove_placement_group(pg)

    def _remove_orphan_placement_groups(self) -> None:
        """Remove replica placement groups that no known replica owns (e.g. the old controller died mid-start)."""
        try:
            table = ray.util.placement_group_table()
        except Exception:
            return
        owned = {f"{REPLICA_PREFIX}{rid}" for rid in self.replicas}
        for info in table.values():
            name = info.get("name", "")
            if name.startswith(REPLICA_PREFIX) and name not in owned and info.get("state") != "REMOVED":
                pg = _placement_group_named(name)
                if pg is not None:
                    log.warning("removing an orphaned placement group", extra={"placement_group": name})
                    remove_placement_group(pg)


def _placement_group_named(name: str) -> PlacementGroup | None:
    try:
        return ray.util.get_placement_group(name)
    except ValueError:
        return None


class _ControllerCollector(Collector):
    """Desired / ready replicas per model, read from the controller's state at scrape time."""

    def __init__(self, controller: ControllerActor) -> None:
        self._c = controller

    def collect(self) -> Any:
        desired = GaugeMetricFamily("llm_cluster_controller_desired_replicas", "Desired replicas per model.", labels=["model"])
        ready = GaugeMetricFamily("llm_cluster_controller_ready_replicas", "Ready replicas per model.", labels=["model"])
        states = GaugeMetricFamily("llm_cluster_controller_replicas", "Replicas per model and state.", labels=["model", "state"])
        for name in self._c.models:
            reps = [r for r in self._c.replicas.values() if r.model == name]
            desired.add_metric([name], self._c.desired[name])
            ready.add_metric([name], sum(r.state == "READY" for r in reps))
            for state in ("STARTING", "READY", "DRAINING"):
                states.add_metric([name, state.lower()], sum(r.state == state for r in reps))
        return [desired, ready, states]

    def describe(self) -> Any:
        return []


def _node_cpus(node_id: str) -> float:
    for n in ray.nodes():
        if n.get("NodeID") == node_id:
            return n.get("Resources", {}).get("CPU", 1)
    return 1


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
