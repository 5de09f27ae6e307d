"""One typed YAML config for the whole cluster.

Every field has a default, so `llm-cluster up` with no file serves the embedded
SmolLM2 model on CPU.  Any field can be overridden from the command line with
``--set path.to.field=value`` (YAML-parsed value; models are addressed by
index, e.g. ``--set models.0.replicas=2``).  A bad config raises
:class:`ConfigError` with one message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

# Re-exported: every config type is importable from here.
from cluster.config_autoscaler import ActuatorConfig as ActuatorConfig
from cluster.config_autoscaler import AutoscalerConfig as AutoscalerConfig
from cluster.config_autoscaler import KubernetesTarget as KubernetesTarget
from cluster.config_autoscaler import PrometheusSourceConfig as PrometheusSourceConfig
from cluster.config_autoscaler import ScalingPolicyConfig as ScalingPolicyConfig
from cluster.config_base import ConfigError as ConfigError
from cluster.config_base import Strict as _Strict
from cluster.config_security import AdmissionConfig as AdmissionConfig
from cluster.config_security import AuthConfig as AuthConfig
from cluster.config_security import InternalTLSConfig as InternalTLSConfig
from cluster.config_security import ServerTLSConfig as ServerTLSConfig
from cluster.config_security import TenantLimits as TenantLimits

DEFAULT_MODEL = "smollm2-135m-instruct"
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"


class LoraAdapterConfig(_Strict):
    #: The name clients put in ``model`` to be served with this adapter.
    name: str = Field(min_length=1, pattern=_NAME_PATTERN)
    #: A local ``peft`` adapter directory (on every node that runs the model), or a hub id where there is internet.
    path: str = Field(min_length=1)


class LoraConfig(_Strict):
    """LoRA adapters served on this model's replicas (vLLM's ``enable_lora`` and its knobs)."""

    #: Adapters every replica loads at start; more are loaded at run time with ``POST /v1/load_lora_adapter``.
    adapters: list[LoraAdapterConfig] = Field(default_factory=list)
    #: Adapters a replica runs in one batch (its active slots); requests for others wait for a slot.
    max_loras: int = Field(2, ge=1)
    #: Largest adapter rank accepted (one of the ranks vLLM's kernels are built for); a larger one is refused at load.
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 16
    #: Adapters a replica keeps in memory (an LRU cache behind the active slots); null: max_loras.
    max_cpu_loras: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> LoraConfig:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate adapter name(s): {', '.join(dupes)}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        return self


class ModelConfig(_Strict):
    #: Served model name: what clients put in ``model``.
    name: str = Field(DEFAULT_MODEL, min_length=1, pattern=_NAME_PATTERN)
    #: "embedded:<name>", a local Hugging Face directory, or a hub id.
    source: str = f"embedded:{DEFAULT_MODEL}"
    #: ``vllm``: the real engine (vLLM AsyncLLM); ``sim``: the simulated engine (cluster/engine/sim/).
    engine: Literal["vllm", "sim"] = "vllm"
    #: Passed to vLLM's AsyncEngineArgs, or to SimParams for the sim engine.
    engine_args: dict[str, Any] = Field(default_factory=dict)
    #: Shards per replica that split every layer (same node, STRICT_PACK); must divide the model's attention heads.
    tensor_parallel_size: int = Field(1, ge=1)
    #: Pipeline stages per replica (may span nodes, PACK).
    pipeline_parallel_size: int = Field(1, ge=1)
    #: vLLM executor: "auto" picks "mp" when all shards share one node, else "ray".
    executor_backend: Literal["auto", "mp", "ray"] = "auto"
    #: Desired replicas at start; the autoscaler changes it at run time (``set_replicas``).
    replicas: int = Field(1, ge=0)
    #: Resources of one shard (one placement-group bundle).  CPUs default to
    #: 1 for vLLM and 0.1 for the sim engine, so many sim replicas fit one node.
    num_cpus_per_shard: float | None = Field(None, ge=0)
    #: GPUs per shard (bundle); 0 on CPU nodes.
    num_gpus_per_shard: float = Field(0.0, ge=0)
    #: Extra environment for the replica's processes (e.g. VLLM_* settings).
    env: dict[str, str] = Field(default_factory=dict)
    #: vLLM on CPU: keep the replica's unbound threads (its front end, vLLM's engine-core process) off the cores
    #: the node's engines are bound to, when the node has a spare core (cluster/replica/cpu_affinity.py).
    isolate_engine_cores: bool = True
    #: ``generate`` (chat/completions), ``embed`` (a pooling model: /v1/embeddings), or ``auto``: what the
    #: model's config says, as vLLM decides it (e.g. a BERT sentence-transformers directory is ``embed``).
    task: Literal["auto", "generate", "embed"] = "auto"
    #: LoRA adapters on this model's replicas; null: LoRA off.
    lora: LoraConfig | None = None
    #: ``vllm serve`` flags for vLLM's OpenAI layer, keys as the flags with
    #: underscores (``tool_call_parser: hermes``, ``enable_auto_tool_choice: true``,
    #: ``reasoning_parser``, ``chat_template``, ``response_role``...); checked
    #: against vLLM's own parser when vLLM is installed.  vLLM engine only.
    serve_args: dict[str, Any] = Field(default_factory=dict)
    #: Sampling defaults for requests that leave a field unset (``temperature``,
    #: ``top_p``, ``top_k``, ``max_tokens``...): override the model's
    #: ``generation_config.json``, as ``vllm serve --override-generation-config`` does.
    default_sampling: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lora_needs_generation(self) -> ModelConfig:
        if self.lora is not None and self.task == "embed":
            raise ValueError("lora: an embedding model (task embed) serves no adapters")
        return self

    @model_validator(mode="after")
    def _check_serve_args(self) -> ModelConfig:
        if self.serve_args and self.engine != "vllm":
            raise ValueError("serve_args: only the vllm engine takes them")
        if self.serve_args:
            try:
                from cluster.engine.vllm_args import check_serve_args
            except ImportError:  # vLLM not installed here (e.g. a router-only image): the replica checks
                return self
            check_serve_args(self.serve_args)
        return self

    @property
    def num_shards(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def shard_cpus(self) -> float:
        if self.num_cpus_per_shard is not None:
            return self.num_cpus_per_shard
        return 0.1 if self.engine == "sim" else 1.0


class PrefixAwareOptions(_Strict):
    #: "text": chained keys of fixed-size UTF-8 blocks of the prompt (no tokenizer in the router), matched
    #: against what the replicas publish they hold and this router's own record of what it sent;
    #: "sim_tokens": the sim engine's tokenizer and block hashes (this router's own record only).
    hash_unit: Literal["text", "sim_tokens"] = "text"
    #: Bytes per text block (about block_chars / 4 tokens).  Replicas publish 128-byte keys: another
    #: size matches only this router's own optimistic record.
    block_chars: int = Field(128, ge=8)
    #: At most this many leading blocks of a prompt are hashed (bounds per-request cost).
    max_blocks: int = Field(128, ge=1)
    #: Bounded load: no replica takes a request above ceil((1 + eps) x mean in-flight).
    #: A miss costs a whole prefill, so the default leans to affinity: on the
    #: routing_compare workload eps 1 spilled at low load (mean in-flight ~1)
    #: and lost 4 points of hit rate; 2 kept the hit rate at its ceiling.
    balance_eps: float = Field(2.0, ge=0)
    #: Score = matched fraction - load_weight x load / (mean load + 1).
    load_weight: float = Field(0.1, ge=0)
    #: A match shorter than this fraction of the prompt's blocks counts as a miss.
    min_match: float = Field(0.0, ge=0, le=1)
    #: Index entries per replica when its load report gives no KV capacity.
    default_index_blocks: int = Field(16_384, ge=1)
    #: Hard cap on index entries per replica, whatever its KV capacity.
    max_index_blocks: int = Field(262_144, ge=1)
    #: Cap on index entries over all of a model's replicas (split evenly between
    #: them): about 250 bytes each, so the default bounds the index near 500 MiB
    #: however many replicas and however large their KV caches.
    max_index_entries: int = Field(2_000_000, ge=1)


class SessionAffinityOptions(_Strict):
    #: Sessions remembered (LRU).
    max_sessions: int = Field(100_000, ge=1)
    #: Spill over when the session's replica would exceed ceil((1 + eps) x mean in-flight).
    balance_eps: float = Field(1.0, ge=0)


class LeastKvOptions(_Strict):
    #: Candidates sampled per decision (power of k choices); all of them when fewer.
    sample: int = Field(4, ge=1)
    #: Added to KV usage (0..1) per request this router has in flight there, so a
    #: burst between two load reports does not all land on one replica.
    in_flight_weight: float = Field(0.05, ge=0)


class WeightedOptions(_Strict):
    #: Weights of the scorers; a replica's score is the weighted sum, the best wins.
    prefix: float = Field(1.0, ge=0)
    session: float = Field(0.5, ge=0)
    load: float = Field(0.3, ge=0)
    kv: float = Field(0.2, ge=0)
    #: Per second of the replica's recent TTFT (its load report's EWMA); 0: ignored.
    ttft: float = Field(0.0, ge=0)
    #: Random candidates scored beside the prefix holders and the session's replica.
    sample: int = Field(4, ge=1)
    #: Bounded load: no replica above ceil((1 + eps) x mean in-flight).
    balance_eps: float = Field(2.0, ge=0)


class LoraAwareOptions(_Strict):
    #: Bounded load: no replica takes an adapter's request above ceil((1 + eps) x mean in-flight);
    #: past it the adapter spreads to another replica (which then holds it too).  On lora_routing
    #: (8 adapters, 4 replicas, max_loras 2) eps 1 spilled often (78 swaps / 300 requests, TTFT p99
    #: 0.77 s); 2 kept 22 swaps and p99 0.33 s.
    balance_eps: float = Field(2.0, ge=0)
    #: Score = prefix-matched fraction - load_weight x load / (mean load + 1), among the adapter's warm replicas.
    load_weight: float = Field(0.5, ge=0)
    #: A replica this router sent an adapter to within this many seconds counts as holding it (load reports lag).
    recent_s: float = Field(1.0, ge=0)


class PolicyOptions(_Strict):
    prefix_aware: PrefixAwareOptions = Field(default_factory=PrefixAwareOptions)
    session_affinity: SessionAffinityOptions = Field(default_factory=SessionAffinityOptions)
    least_kv: LeastKvOptions = Field(default_factory=LeastKvOptions)
    weighted: WeightedOptions = Field(default_factory=WeightedOptions)
    lora_aware: LoraAwareOptions = Field(default_factory=LoraAwareOptions)


class CircuitBreakerConfig(_Strict):
    #: Consecutive failed attempts (errors or first-token timeouts) that eject a replica.
    failures: int = Field(3, ge=1)
    #: First ejection length; each further ejection in a row doubles it, up to max_eject_s.
    eject_s: float = Field(5.0, gt=0)
    #: Longest ejection.
    max_eject_s: float = Field(60.0, gt=0)


class RouterConfig(_Strict):
    #: Address the public gRPC and HTTP servers bind.
    host: str = "0.0.0.0"
    #: Public gRPC port (llm_cluster.v1.Inference, health, reflection); 0 picks a free one.
    grpc_port: int = Field(50051, ge=0, le=65535)
    #: Public OpenAI-compatible HTTP port; 0 picks a free one.
    http_port: int = Field(8000, ge=0, le=65535)
    #: Router processes on this node sharing the public ports (SO_REUSEPORT), each with its own endpoint
    #: watch and load streams; one metrics port for all.  null: the cores this process may use (the Helm
    #: chart sets it from the pod's CPU limit).  `llm-cluster router` only; the router actor runs one.
    workers: int | None = Field(None, ge=1, le=256)
    #: "relay": tokens over each replica's relay stream (replica.proto's messages as TCP frames); "grpc": the OpenAI RPC.
    replica_transport: Literal["relay", "grpc"] = "relay"
    #: The relay stream's per-token path: "native" (C, built at install; Python with a warning where it was not
    #: built) or "python".  Both do the same (cluster/router/pump.py); "native" costs less CPU per token.
    relay_pump: Literal["native", "python"] = "native"
    #: Routing policy: one of cluster.router.policies.POLICIES (docs/routing.md); a request may pick another with ``x-routing-policy``.
    policy: str = "power_of_two"
    #: Upper bound on one request's life in the router, seconds.
    request_timeout_s: float = Field(600.0, gt=0)
    #: How long a request may wait for a ready replica before UNAVAILABLE.
    no_replica_wait_s: float = Field(5.0, ge=0)
    #: Largest request body (HTTP) or message (gRPC) accepted; larger ones get 413 / RESOURCE_EXHAUSTED.
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    #: Token budget assumed for a request that sets no max_tokens (tenant TPM
    #: charge, admission cost); the engine's own default is what it generates.
    default_max_tokens: int = Field(256, ge=1)
    #: Attempts per request when a replica fails before the first token.
    max_attempts: int = Field(3, ge=1)
    #: Options of each routing policy (only the chosen one's are used).
    policy_options: PolicyOptions = Field(default_factory=PolicyOptions)
    #: A replica that sends no first token within this many seconds is given
    #: up on for the request (retried elsewhere) and counts as a failure.
    first_token_timeout_s: float = Field(60.0, gt=0)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    tls: ServerTLSConfig = Field(default_factory=ServerTLSConfig)
    #: Times one request may be resumed on another replica after its replica
    #: failed mid-stream (request migration); 0 turns migration off.
    max_migrations: int = Field(2, ge=0)
    #: Prometheus /metrics (and /healthz) on their own port, apart from the public API; 0 = ephemeral.
    metrics_port: int = Field(9400, ge=0, le=65535)
    #: Requests that may wait at once for a model with no ready replica (scale from zero);
    #: more are refused at once with UNAVAILABLE / 503 instead of piling up.
    max_waiting_for_replica: int = Field(1000, ge=0)
    #: A stream that gets no token for this many seconds after its first one is
    #: treated as a failed replica (hung engine, frozen process, silent network
    #: partition) and migrated.  Generous: a busy engine can pause for seconds.
    stall_timeout_s: float = Field(30.0, gt=0)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from cluster.router.policies import POLICIES  # the registry (its modules import this one)

        if v not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; choose one of {', '.join(POLICIES)}")
        return v


class ControllerConfig(_Strict):
    #: Seconds between health checks of each ready replica.
    health_check_interval_s: float = Field(2.0, gt=0)
    #: How long one health check may take before it counts as failed. Apart from the interval: a replica (or
    #: this controller) busy for a second on a loaded machine is slow, not dead; replacing it costs a whole start.
    health_check_timeout_s: float = Field(10.0, gt=0)
    #: Consecutive failed health checks before a replica is replaced (a dead actor is replaced at once).
    health_check_failures: int = Field(3, ge=1)
    #: Scale-down waits this long for in-flight requests before stopping a replica.
    drain_timeout_s: float = Field(30.0, ge=0)
    #: A replica that is not ready within this many seconds is replaced.
    start_timeout_s: float = Field(600.0, gt=0)
    #: The controller's /metrics and /sd/replicas (Prometheus HTTP service discovery); 0 = ephemeral.
    metrics_port: int = Field(9401, ge=0, le=65535)
    #: Each replica's /metrics port: 0 = ephemeral (found through /sd/replicas); N > 0 = N + the
    #: replica's slot on its node, so several replicas on one node never collide.
    replica_metrics_port: int = Field(0, ge=0, le=65535)


class RayConfig(_Strict):
    #: None: start a local head (or join one already running on this machine).
    address: str | None = None
    #: Ray namespace of the controller, routers and replicas.
    namespace: str = "llm-cluster"
    #: CPUs a head started by `up` announces (default: the machine's).
    num_cpus: int | None = None
    #: Address of the Ray head that `llm-cluster up` starts itself (ignored when joining ``address``).
    #: Loopback keeps a single-machine cluster's traffic on this machine; set the machine's own IP to let
    #: other machines join it with `ray start --address`.
    node_ip_address: str = "127.0.0.1"


class ClusterConfig(_Strict):
    models: list[ModelConfig] = Field(default_factory=lambda: [ModelConfig()])
    router: RouterConfig = Field(default_factory=RouterConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    #: Mutual TLS on the router -> replica data plane.
    internal_tls: InternalTLSConfig = Field(default_factory=InternalTLSConfig)
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    #: Log level of every process (JSON lines on stderr).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _unique_model_names(self) -> ClusterConfig:
        names = [m.name for m in self.models]
        served = names + [a.name for m in self.models if m.lora for a in m.lora.adapters]
        dupes = sorted({n for n in served if served.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model or adapter name(s): {', '.join(dupes)}")
        if self.autoscaler.model is not None and self.autoscaler.model not in names:
            raise ValueError(f"autoscaler.model {self.autoscaler.model!r} is not one of the models ({', '.join(names)})")
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"config field '{loc}': {msg}{more}"


def _apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected path.to.field=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    value = yaml.safe_load(raw) if raw else ""
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit():
                raise ConfigError(f"override {path!r}: '{key}' must be a list index")
            idx = int(key)
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                default: Any = [] if key == "models" else {}
                node = node.setdefault(key, default)
        else:
            raise ConfigError(f"override {path!r}: '{keys[i - 1]}' is not a section")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ClusterConfig:
    """Read YAML at ``path`` (optional), apply ``overrides``, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {p}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {p}: top level must be a mapping")
        data = loaded or {}
    for assignment in overrides or []:
        _apply_override(data, assignment)
    try:
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
