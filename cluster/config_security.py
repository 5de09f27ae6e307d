"""Who may use the cluster and how it is protected: API keys and tenants' limits, admission, TLS.

The ``router.auth``, ``router.admission``, ``router.tls`` and ``internal_tls``
sections of cluster.yaml (see docs/security.md); :mod:`cluster.config`
embeds these and re-exports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.config_base import Strict


class TenantLimits(Strict):
    """One tenant's limits and priority class (in the API key file, or ``router.auth.anonymous``)."""

    #: Admission weight class: ``interactive`` outweighs ``batch`` in the fair queue.
    priority: Literal["interactive", "batch"] = "interactive"
    #: Requests per minute (token bucket; a burst of up to one minute's allowance); null: unlimited.
    requests_per_minute: int | None = Field(None, gt=0)
    #: Prompt + completion tokens, charged as an estimate and reconciled when the request ends.
    #: Prompt + completion tokens per minute, charged up front and reconciled at the end; null: unlimited.
    tokens_per_minute: int | None = Field(None, gt=0)
    #: Requests in flight at once; null: unlimited.
    max_concurrent: int | None = Field(None, gt=0)
    #: Models and LoRA adapters (by the name in ``model``) this tenant may call; null: all.  Others get 403.
    models: list[str] | None = None
    #: May load and unload LoRA adapters (``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``).
    admin: bool = False


class AuthConfig(Strict):
    #: Off for the local quick start; on in the Helm chart.  When on, every
    #: inference request needs a key from ``key_file``.
    enabled: bool = False
    #: YAML with ``tenants`` and ``keys`` (SHA-256 digests); see docs/security.md.
    key_file: str | None = None
    #: How often the key file is checked for changes (it is reloaded without a restart).
    reload_interval_s: float = Field(2.0, gt=0)
    #: Limits of the one tenant every request belongs to while auth is off.
    anonymous: TenantLimits = Field(default_factory=TenantLimits)

    @model_validator(mode="after")
    def _key_file_when_enabled(self) -> AuthConfig:
        if self.enabled and not self.key_file:
            raise ValueError("key_file is required when auth is enabled")
        return self


class AdmissionConfig(Strict):
    #: Requests the router lets through per ready replica; the rest wait in the queue.
    max_concurrent_per_replica: int = Field(64, ge=1)
    #: Waiting requests beyond this are refused at once (429 / RESOURCE_EXHAUSTED).
    max_queue: int = Field(1024, ge=0)
    #: A request still waiting after this long is refused (429), never left to time out.
    queue_timeout_s: float = Field(10.0, gt=0)
    #: Weighted fair queuing weights of the priority classes.
    weights: dict[Literal["interactive", "batch"], float] = Field(default_factory=lambda: {"interactive": 8.0, "batch": 1.0})

    @field_validator("weights")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w <= 0 for w in v.values()):
            raise ValueError("weights must be > 0")
        return v


class ServerTLSConfig(Strict):
    """TLS on the router's public gRPC and HTTP ports."""

    #: PEM certificate (chain) of the public endpoints; TLS is on when set.
    cert_file: str | None = None
    #: Its PEM private key.
    key_file: str | None = None
    #: When set, clients must present a certificate signed by this CA (mutual TLS).
    client_ca_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @model_validator(mode="after")
    def _pair(self) -> ServerTLSConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file needs cert_file and key_file")
        return self


class InternalTLSConfig(Strict):
    """Mutual TLS between routers and replicas: both sides present a cert signed by ``ca_file``."""

    #: The CA both sides trust.
    ca_file: str | None = None
    #: This side's PEM certificate (routers and replicas may share one).
    cert_file: str | None = None
    #: Its PEM private key.
    key_file: str | None = None
    #: The name the router expects in replica certificates (replicas are dialled by IP).
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    @model_validator(mode="after")
    def _complete(self) -> InternalTLSConfig:
        given = [bool(self.ca_file), bool(self.cert_file), bool(self.key_file)]
        if any(given) and not all(given):
            raise ValueError("ca_file, cert_file and key_file go together")
        return self
