"""API keys and tenants.

Keys live in one YAML file (a plain file, or a Kubernetes Secret mounted as
one), stored only as SHA-256 digests — a leaked key file lets nobody in:

    tenants:
      search-team:
        priority: interactive        # interactive | batch (admission weights)
        requests_per_minute: 600
        tokens_per_minute: 200000    # prompt + completion
        max_concurrent: 32
    keys:
      - sha256: "9f86d081884c7d65..."  # `llm-cluster keys new --tenant search-team` prints one
        tenant: search-team

A request presents its key as HTTP ``Authorization: Bearer <key>`` or gRPC
metadata ``authorization: Bearer <key>``; the key's digest is looked up (API
keys are random 256-bit tokens, so a fast digest is enough: there is nothing
to brute-force).  The file is re-read when its content changes (polled, which
also follows the symlink swap Kubernetes does on Secret updates), without a
restart; a file that fails to parse keeps the previous keys and logs why.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster.config import TenantLimits as TenantSpec

log = logging.getLogger(__name__)

KEY_PREFIX = "llmc-"


class AuthError(Exception):
    """Missing or unknown key: HTTP 401 / gRPC UNAUTHENTICATED."""


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str

    @field_validator("sha256", mode="before")
    @classmethod
    def _quoted(cls, v: object) -> object:
        if not isinstance(v, str):
            raise ValueError("must be a quoted string of 64 hex digits (YAML reads unquoted digits as a number)")
        return v


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[str, TenantSpec] = Field(default_factory=dict)
    keys: list[KeyEntry] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    spec: TenantSpec


#: The tenant of every request when authentication is off (limits from ``router.auth.anonymous``).
ANONYMOUS = "anonymous"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_key_file(text: str) -> dict[str, Tenant]:
    """Digest → tenant; raises ValueError naming the problem."""
    try:
        raw: Any = yaml.safe_load(text) or {}
        kf = KeyFile.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"key file is not valid YAML: {exc}") from None
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        raise ValueError(f"key file field '{'.'.join(map(str, e['loc']))}': {msg}") from None
    out: dict[str, Tenant] = {}
    for i, k in enumerate(kf.keys):
        if k.tenant not in kf.tenants:
            raise ValueError(f"key file field 'keys.{i}.tenant': unknown tenant {k.tenant!r}")
        out[k.sha256] = Tenant(k.tenant, kf.tenants[k.tenant])
    return out


def add_key_to_file(path: str | Path, sha256: str, tenant: str) -> None:
    """Append a key digest for ``tenant`` to the key file (created if missing), keeping it valid."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    parse_key_file(text)  # refuse to edit a file that is already broken
    data: dict[str, Any] = yaml.safe_load(text) or {}
    if not data.get("tenants"):
        data["tenants"] = {}
    if tenant not in data["tenants"]:
        data["tenants"][tenant] = {}
    if not data.get("keys"):
        data["keys"] = []
    data["keys"].append({"sha256": sha256, "tenant": tenant})
    out = yaml.safe_dump(data, sort_keys=False)
    parse_key_file(out)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(out)
    tmp.replace(p)  # atomic: a router reloading meanwhile sees the old or the new file


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class KeyStore:
    """The live key → tenant map, reloaded from ``path`` when it changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._by_digest: dict[str, Tenant] = {}
        self._content_digest = ""
        self._task: asyncio.Task | None = None
        self.reload(strict=True)

    @property
    def tenants(self) -> dict[str, Tenant]:
        return {t.name: t for t in self._by_digest.values()}

    def reload(self, strict: bool = False) -> bool:
        """Re-read the file if its content changed; True when keys changed."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            if strict:
                raise ValueError(f"cannot read API key file {self.path}: {exc.strerror}") from None
            log.error("API key file unreadable; keeping previous keys", extra={"path": str(self.path), "error": str(exc)})
            return False
        d = hashlib.sha256(data).hexdigest()
        if d == self._content_digest:
            return False
        try:
            keys = parse_key_file(data.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            if strict:
                raise ValueError(f"{self.path}: {exc}") from None
            log.error("API key file invalid; keeping previous keys", extra={"path": str(self.path), "error": str(exc)})
            return False
        self._by_digest = keys
        self._content_digest = d
        log.info("API keys loaded", extra={"path": str(self.path), "keys": len(keys), "tenants": len(self.tenants)})
        return True

    def authenticate(self, key: str | None) -> Tenant:
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        tenant = self._by_digest.get(digest(key))
        if tenant is None:
            raise AuthError("invalid API key")
        return tenant

    def start_watching(self, interval_s: float = 2.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                self.reload()

        self._task = asyncio.get_running_loop().create_task(loop())

    def stop_watching(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
