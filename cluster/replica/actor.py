"""The Ray actor that hosts one engine replica.

Lifecycle, driven by the controller (cluster.controller):
``start()`` builds the engine and starts the replica's gRPC server on its node,
returning the address the router should dial; ``health()`` is the controller's
liveness probe; ``drain(timeout)`` refuses new work and waits for in-flight
requests; ``stop()`` shuts the engine down.  Tokens never travel through Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from cluster.config import InternalTLSConfig, ModelConfig
from cluster.engine import make_engine
from cluster.logs import setup_logging
from cluster.metrics_server import start_metrics_server
from cluster.replica.cpu_affinity import CpuAffinity, node_cores, normal_priority
from cluster.replica.metrics import ReplicaMetrics
from cluster.replica.server import ReplicaServicer, start_server

log = logging.getLogger(__name__)


def fit_cpu_binding(spec: str, cores: list[int] | None = None) -> str:
    """Map a ``VLLM_CPU_OMP_THREADS_BIND`` spec onto the cores this process may run on.

    The controller hands out core slots from Ray's logical CPU count, which may exceed the node's real cores
    (e.g. ``ray start --num-cpus 4`` on a 2-core node, to fit a 3-shard replica): core ``i`` becomes the
    ``i mod n``-th usable core, so vLLM never binds a thread to a core that does not exist.  ``auto`` and
    ``all`` pass through.
    """
    if spec in ("auto", "all", "nobind"):
        return spec
    usable = sorted(cores if cores is not None else os.sched_getaffinity(0))

    def one(core: str) -> str:
        if "-" in core:
            lo, hi = (int(x) for x in core.split("-", 1))
            return ",".join(one(str(c)) for c in range(lo, hi + 1))
        return str(usable[int(core) % len(usable)])

    try:
        return "|".join(",".join(one(c) for c in shard.split(",")) for shard in spec.split("|"))
    except ValueError:
        return spec  # not ours to judge: vLLM reports a malformed spec itself


class ReplicaActor:
    def __init__(
        self,
        replica_id: str,
        model: dict[str, Any],
        executor_backend: str | None,
        env: dict[str, str] | None = None,
        tls: dict[str, Any] | None = None,
        metrics_port: int = 0,
    ) -> None:
        setup_logging()
        for k, v in (env or {}).items():
            os.environ[k] = v
        self.replica_id = replica_id
        self.model = ModelConfig.model_validate(model)
        cpu_vllm = self.model.engine == "vllm" and self.model.num_gpus_per_shard == 0
        #: The nice this actor (and so its engine's processes) runs at: 0 unless Ray's could not be undone.
        self.nice = normal_priority()
        #: Keeps the node's unbound threads off its engines' cores (vLLM on CPU; ``isolate_engine_cores``).
        self.affinity = CpuAffinity(node_cores()) if cpu_vllm and self.model.isolate_engine_cores else None
        if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = fit_cpu_binding(os.environ["VLLM_CPU_OMP_THREADS_BIND"])
        self.executor_backend = executor_backend
        #: ``internal_tls``: the replica then serves mutual TLS only.
        self.tls = InternalTLSConfig.model_validate(tls) if tls else None
        self.engine = None
        self.servicer: ReplicaServicer | None = None
        self.server = None
        self.address: str | None = None
        self.relay_address: str | None = None
        self.created_at = time.time()
        self.metrics_port = metrics_port
        self.metrics_address: str | None = None
        self._metrics_runner = None
        #: LoRA adapters loaded into the engine: name -> path.
        self.adapters: dict[str, str] = {}

    async def start(self) -> dict[str, Any]:
        """Build the engine, serve replica.proto; returns its address and context length."""
        self.engine = await make_engine(self.model, executor_backend=self.executor_backend)
        if self.affinity is not None:  # after the engine bound its OpenMP threads: they keep their cores
            self.affinity.refresh(force=True)
        metrics = ReplicaMetrics(self.model.name, self.replica_id)
        metrics.watch_load(self.engine.load)
        self.engine.attach_metrics(metrics)
        self.servicer = servicer = ReplicaServicer(self.engine, self.replica_id, self.model.name)
        metrics.watch_in_flight(lambda: len(servicer.in_flight))
        host = ray.util.get_node_ip_address()
        self.server, port = await start_server(self.servicer, host="0.0.0.0", port=0, tls=self.tls)
        self.address = f"{host}:{port}"
        self.relay_address = f"{host}:{self.server.relay_port}"
        self._metrics_runner, mport = await start_metrics_server(metrics.registry, "0.0.0.0", self.metrics_port)
        self.metrics_address = f"{host}:{mport}"
        log.info(
            "replica ready",
            extra={
                "replica": self.replica_id,
                "model": self.model.name,
                "address": self.address,
                "relay_address": self.relay_address,
                "metrics_address": self.metrics_address,
            },
        )
        return {
            "address": self.address,
            "relay_address": self.relay_address,
            "max_model_len": self.engine.max_model_len,
            "metrics_address": self.metrics_address,
            "card": self._card(),
        }

    def _card(self) -> dict[str, str]:
        """The model card for the endpoint set (vLLM's GET /v1/models ``root`` / ``parent``)."""
        card = self.engine.model_card if self.engine is not None else None
        return {k: v for k, v in (("root", card.root), ("parent", card.parent)) if v} if card else {}

    async def health(self) -> dict[str, Any]:
        if self.servicer is None or self.engine is None:
            return {"ready": False, "started": False, "model": self.model.name, "started_at": self.created_at}
        if self.affinity is not None:  # a replica placed on this node since may have taken the spare core
            self.affinity.refresh()
        snap = self.engine.load()
        return {
            "ready": not self.servicer.draining,
            "draining": self.servicer.draining,
            "model": self.model.name,
            "started_at": self.created_at,
            "address": self.address,
            "relay_address": self.relay_address,
            "metrics_address": self.metrics_address,
            "in_flight": len(self.servicer.in_flight),
            "running": snap.running,
            "waiting": snap.waiting,
            "kv_cache_usage": snap.kv_cache_usage,
            "max_model_len": self.engine.max_model_len,
            "adapters": sorted(self.adapters),
            "card": self._card(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    # ---- LoRA adapters (the controller's set; answers cross Ray as dicts) ----
    async def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        from cluster.engine.base import EngineRequestError

        if self.engine is None:
            return {"ok": False, "status": 503, "message": f"replica {self.replica_id} is not started"}
        try:
            await self.engine.load_adapter(name, path)
        except EngineRequestError as exc:
            return {"ok": False, "status": 400, "message": str(exc)}
        except Exception as exc:  # vLLM reports a bad adapter directory in many ways
            log.warning("adapter load failed", extra={"replica": self.replica_id, "adapter": name, "error": repr(exc)[:300]})
            return {"ok": False, "status": 400, "message": f"adapter {name!r} could not be loaded from {path!r}: {exc}"}
        self.adapters[name] = path
        log.info("adapter loaded", extra={"replica": self.replica_id, "adapter": name, "path": path})
        return {"ok": True, "status": 200}

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        self.adapters.pop(name, None)
        found = self.engine is not None and await self.engine.unload_adapter(name)
        return {"ok": True, "status": 200, "found": found}

    async def set_adapters(self, wanted: dict[str, str]) -> dict[str, Any]:
        """Serve exactly ``wanted`` (name -> path): load the missing ones, unload the rest."""
        for name in [n for n in self.adapters if n not in wanted]:
            await self.unload_adapter(name)
        for name, path in wanted.items():
            if self.adapters.get(name) != path:
                res = await self.load_adapter(name, path)
                if not res["ok"]:
                    return res
        return {"ok": True, "status": 200}

    async def drain(self, timeout_s: float) -> int:
        if self.servicer is None:
            return 0
        return await self.servicer.drain(timeout_s)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        if self.engine is not None:
            await self.engine.shutdown()
        self.engine = None
        log.info("replica stopped", extra={"replica": self.replica_id})

    async def ping(self) -> bool:
        await asyncio.sleep(0)
        return True
