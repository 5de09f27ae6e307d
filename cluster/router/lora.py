"""LoRA adapters at the router: ``model: <adapter>`` resolution, tenants' allow-lists, and the admin routes.

- :func:`resolve_adapter`: a request whose ``model`` names an adapter (the
  endpoint set lists each model's adapters) is routed to a replica of its
  base model; the body keeps the adapter's name, which the replica's engine
  resolves to the adapter (vLLM's ``OpenAIServingModels``).
- :func:`check_allowed`: a tenant with a ``models`` allow-list may call only
  those models and adapters (403 otherwise).
- :class:`AdapterAdmin`: the admin routes ``POST /v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` (vLLM's), answered by the controller, which
  owns each model's adapter set; with auth on only a tenant with ``admin:
  true`` may call them (403 otherwise).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import grpc

from cluster.router.auth import Tenant
from cluster.router.balancer import RouterError
from cluster.router.validation import RelayRequest


class Forbidden(RouterError):
    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.PERMISSION_DENIED, message)


def resolve_adapter(req: RelayRequest, models: set[str], adapters: dict[str, str]) -> None:
    """Route a request for adapter A to A's base model (``req.adapter`` = A)."""
    if req.model not in models and req.model in adapters:
        req.adapter, req.model = req.model, adapters[req.model]


def check_allowed(tenant: Tenant, name: str) -> None:
    allowed = getattr(tenant.spec, "models", None)
    if allowed is not None and name not in allowed:
        raise Forbidden(f"tenant {tenant.name!r} may not use model {name!r}")


def check_admin(tenant: Tenant, auth_on: bool) -> None:
    if auth_on and not getattr(tenant.spec, "admin", False):
        raise Forbidden(f"tenant {tenant.name!r} is not an admin: loading and unloading adapters needs an admin key")


class AdapterAdmin(Protocol):
    """Where the admin routes go: ``{"ok", "status", "message", ...}`` answers (the controller's)."""

    async def load(self, name: str, path: str, model: str | None) -> dict[str, Any]: ...
    async def unload(self, name: str) -> dict[str, Any]: ...
    async def list(self) -> dict[str, dict[str, str]]: ...


class ControllerAdmin:
    """The controller actor (cluster.controller) behind the admin routes."""

    def __init__(self, controller: Any) -> None:
        self._c = controller

    async def load(self, name: str, path: str, model: str | None) -> dict[str, Any]:
        return await self._c.load_adapter.remote(name, path, model)

    async def unload(self, name: str) -> dict[str, Any]:
        return await self._c.unload_adapter.remote(name)

    async def list(self) -> dict[str, dict[str, str]]:
        return await self._c.list_adapters.remote()


def admin_body(raw: bytes, load: bool) -> tuple[str, str, str | None]:
    """(lora_name, lora_path, model) of a load/unload body; ValueError naming the field."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ValueError("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("body: must be a JSON object")
    name = body.get("lora_name")
    if not isinstance(name, str) or not name:
        raise ValueError("lora_name: required (a string)")
    path = body.get("lora_path", "")
    if load and (not isinstance(path, str) or not path):
        raise ValueError("lora_path: required (a string: the adapter directory on the replicas' nodes)")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError("model: must be a string (the base model)")
    return name, str(path), model
