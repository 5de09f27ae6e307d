"""The two servers the parity tests compare: vLLM's own OpenAI server and a cluster, over one model.

``vllm serve`` (``python -m vllm.entrypoints.openai.api_server``) is started with the engine arguments the
cluster's replica would build (``cluster.engine.vllm_backend._build_engine_args`` over the same model config,
turned into CLI flags and checked by parsing them back with vLLM's own argument parser), the same OpenAI-layer
flags (``serve_args``) and the same CPU thread count, so any difference in an answer is the cluster's.
The cluster is a real local Ray deployment (controller + vLLM replica actor) with the router running in a
background thread, so tests can be plain synchronous functions using blocking HTTP clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from cluster.config import ModelConfig
from cluster.models.prepare import prepare_embedded, resolve_model_source
from tests.conftest import LOOPBACK, free_port, local_ray, start_deployment

log = logging.getLogger(__name__)

MODEL = "smollm2-135m-instruct"
#: What the parity deployment sets for the model, as a config user would (``models[0]`` of cluster.yaml).
#: Eager mode, as the other e2e tests: CPU replicas compile by default (as vllm serve does), a minute more per start.
ENGINE_ARGS: dict[str, Any] = {"max_model_len": 1024, "enforce_eager": True}
SERVE_ARGS: dict[str, Any] = {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}


def model_config() -> ModelConfig:
    """The model config both servers are built from (the cluster loads the same values from overrides)."""
    return ModelConfig.model_validate({"name": MODEL, "engine_args": ENGINE_ARGS, "serve_args": SERVE_ARGS})


def _flag(name: str, value: Any) -> list[str]:
    """One ``AsyncEngineArgs`` / serve-arg field as ``vllm serve`` flags."""
    opt = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [opt] if value else ["--no-" + name.replace("_", "-")]
    if isinstance(value, (list, tuple)):
        return [opt, *(str(v) for v in value)]
    if isinstance(value, dict):
        return [opt, json.dumps(value)]
    return [opt, str(value)]


def _replica_engine_args(model: ModelConfig) -> Any:
    """What the replica's engine builder makes of ``model`` on this machine: ``make_engine``'s engine args
    (``vllm_engine_args``), merged as ``VllmEngine.create`` merges them (the serve args vLLM's engine reads
    too, ``default_sampling`` as ``override_generation_config``), through ``_build_engine_args``."""
    from vllm.platforms import current_platform

    from cluster.engine.model_args import vllm_engine_args
    from cluster.engine.vllm_backend import _build_engine_args, merge_engine_args
    from cluster.replica.placement import choose_executor_backend

    merged = merge_engine_args(vllm_engine_args(model), model.serve_args, model.default_sampling)
    return _build_engine_args(
        resolve_model_source(model.source),
        model.name,
        merged,
        model.tensor_parallel_size,
        model.pipeline_parallel_size,
        choose_executor_backend(model),
        current_platform.is_cpu(),
    )


def engine_flags(model: ModelConfig) -> list[str]:
    """The replica's engine arguments as CLI flags: every field its builder sets away from vLLM's default."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    built = _replica_engine_args(model)
    source = built.model
    default = AsyncEngineArgs(model=source)
    flags = ["--model", source]
    for f in dataclasses.fields(AsyncEngineArgs):
        value = getattr(built, f.name)
        if f.name != "model" and value != getattr(default, f.name):
            flags += _flag(f.name, value)
    return flags


def serve_flags(model: ModelConfig) -> list[str]:
    """The model's OpenAI-layer settings (``serve_args``) as ``vllm serve`` flags (``default_sampling`` is an
    engine argument by then: ``--override-generation-config``, among :func:`engine_flags`)."""
    from cluster.engine.vllm_args import SHARED_WITH_ENGINE

    flags: list[str] = []
    for name, value in model.serve_args.items():
        if name not in SHARED_WITH_ENGINE:  # those are engine flags too, already among engine_flags
            flags += _flag(name, value)
    return flags


def check_flags_round_trip(model: ModelConfig, argv: list[str]) -> None:
    """Parse ``argv`` with vLLM's own parser: the engine args it yields must equal the replica's."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    parsed = AsyncEngineArgs.from_cli_args(ns)
    built = _replica_engine_args(model)
    default = AsyncEngineArgs(model=built.model)
    # Every choice the replica makes must reach vllm serve; where the replica leaves vLLM's default, vllm serve
    # has its CLI default (a few differ only as None vs False/True, e.g. enable_lora, reasoning_parser_plugin).
    chosen = [f.name for f in dataclasses.fields(AsyncEngineArgs) if getattr(built, f.name) != getattr(default, f.name)]
    diff = {n: (getattr(parsed, n), getattr(built, n)) for n in chosen if getattr(parsed, n) != getattr(built, n)}
    assert not diff, f"vllm serve flags give other engine args than the replica's (flag, replica): {diff}"
    for name, value in model.serve_args.items():
        assert getattr(ns, name) == value, f"serve arg {name}: flag parsed as {getattr(ns, name)!r}, want {value!r}"


def reference_env(model: ModelConfig) -> dict[str, str]:
    """The replica's CPU thread count (one shard gets ``shard_cpus`` cores), on cores the replica's first slot
    does not use: the same OpenMP reduction order, so logprobs agree to the last digits."""
    from cluster.replica.actor import fit_cpu_binding

    env = dict(os.environ, **model.env)
    usable = sorted(os.sched_getaffinity(0))
    per = max(1, int(model.shard_cpus))
    cores = [str(usable[-1 - i] if len(usable) > per else usable[i % len(usable)]) for i in range(per)]
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", fit_cpu_binding(",".join(sorted(cores))))
    return env


class ReferenceServer:
    """``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 and a free port, in its own process group."""

    def __init__(self, model: ModelConfig, log_path: Path) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [*engine_flags(model), *serve_flags(model), "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0
        check_flags_round_trip(model, self.argv)

    def start(self, timeout_s: float = 600.0) -> None:
        started = time.monotonic()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=reference_env(self.model),
                start_new_session=True,  # its engine-core children share the group: stopped together, by its id
            )
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > timeout_s:
                self.stop()
                raise AssertionError(f"vllm serve not healthy in {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.5)
        self.startup_s = time.monotonic() - started
        log.info("vllm serve ready", extra={"seconds": round(self.startup_s, 1), "argv": self.argv})

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group is the server's own, no one else's
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # engine-core children left behind by the parent


def cluster_overrides(model: ModelConfig) -> list[str]:
    """The deployment's config overrides: one replica of ``model``, everything on loopback, ephemeral ports."""
    out = [
        *LOOPBACK,
        "controller.health_check_interval_s=1",
        f"models.0.name={model.name}",
        f"models.0.engine_args={json.dumps(model.engine_args)}",
    ]
    if model.serve_args:
        out.append(f"models.0.serve_args={json.dumps(model.serve_args)}")
    if model.default_sampling:
        out.append(f"models.0.default_sampling={json.dumps(model.default_sampling)}")
    return out


class ClusterThread:
    """A controller + one real vLLM replica on the caller's local Ray, and a router serving HTTP from its own
    event loop in a daemon thread."""

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="parity-router", daemon=True)
        self.router: Any = None
        self.url = ""
        self.startup_s = 0.0

    def start(self, timeout_s: float = 600.0) -> None:
        started = time.monotonic()
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            start_deployment(cluster_overrides(self.model), ready=1, timeout_s=timeout_s, watch_timeout_s=10), self.loop
        )
        _, _, self.router = fut.result(timeout_s + 30)
        self.url = f"http://127.0.0.1:{self.router.http_port}"
        self.startup_s = time.monotonic() - started

    def stop(self) -> None:
        if self.router is not None:
            asyncio.run_coroutine_threadsafe(self.router.stop(1.0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def parity_servers(log_dir: Path) -> Iterator[tuple[ReferenceServer, ClusterThread]]:
    """Both servers, started side by side (the cluster's replica while vllm serve loads), stopped at the end."""
    model = model_config()
    prepare_embedded(MODEL, progress=False)
    ref = ReferenceServer(model, log_dir / "vllm-serve.log")
    with local_ray("llm-cluster-parity", num_cpus=2):
        cluster = ClusterThread(model)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="vllm-serve-start") as pool:
                ref_started = pool.submit(ref.start)
                cluster.start()
                ref_started.result()
            yield ref, cluster
        finally:
            cluster.stop()
            ref.stop()
