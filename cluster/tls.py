"""TLS credentials from the certificate paths in the config.

Two uses:

- the router's public ports (``router.tls``): server TLS on gRPC and HTTP,
  optionally requiring client certificates signed by ``client_ca_file``;
- the data plane (``internal_tls``): mutual TLS between routers and replicas.
  Both sides present a certificate signed by the one cluster CA and verify
  the other's; a replica accepts no client without one.  Replicas are dialled
  by IP, so ``server_name`` names what the router expects in their
  certificates when it is not the IP.

Files are read once when a server or channel is created; a missing or
unreadable file fails at start with the config field in the message.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from cluster.config import ConfigError, InternalTLSConfig, ServerTLSConfig


def _read(field: str, path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config field '{field}': cannot read {path}: {exc.strerror}") from None


def server_credentials(cfg: ServerTLSConfig) -> grpc.ServerCredentials | None:
    """Credentials for the public gRPC port (None: plaintext)."""
    if not cfg.enabled:
        return None
    cert = _read("router.tls.cert_file", cfg.cert_file)
    key = _read("router.tls.key_file", cfg.key_file)
    ca = _read("router.tls.client_ca_file", cfg.client_ca_file)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def http_ssl_context(cfg: ServerTLSConfig) -> ssl.SSLContext | None:
    """An SSL context for the public HTTP port (None: plaintext)."""
    if not cfg.enabled:
        return None
    for field, path in (("router.tls.cert_file", cfg.cert_file), ("router.tls.key_file", cfg.key_file)):
        _read(field, path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)  # type: ignore[arg-type]
    if cfg.client_ca_file:
        _read("router.tls.client_ca_file", cfg.client_ca_file)
        ctx.load_verify_locations(cfg.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def replica_server_credentials(cfg: InternalTLSConfig | None) -> grpc.ServerCredentials | None:
    """A replica's server side of mutual TLS (None: plaintext)."""
    if cfg is None or not cfg.enabled:
        return None
    ca = _read("internal_tls.ca_file", cfg.ca_file)
    cert = _read("internal_tls.cert_file", cfg.cert_file)
    key = _read("internal_tls.key_file", cfg.key_file)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def replica_channel_credentials(cfg: InternalTLSConfig | None) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """The router's client side of mutual TLS, plus channel options (None: plaintext)."""
    if cfg is None or not cfg.enabled:
        return None, []
    ca = _read("internal_tls.ca_file", cfg.ca_file)
    cert = _read("internal_tls.cert_file", cfg.cert_file)
    key = _read("internal_tls.key_file", cfg.key_file)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = [("grpc.ssl_target_name_override", cfg.server_name)] if cfg.server_name else []
    return creds, options


def replica_server_ssl_context(cfg: InternalTLSConfig | None) -> ssl.SSLContext | None:
    """The relay stream's server side of mutual TLS (cluster/replica/relay.py; None: plaintext)."""
    ctx = _internal_context(cfg, ssl.Purpose.CLIENT_AUTH)
    if ctx is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def replica_client_ssl_context(cfg: InternalTLSConfig | None) -> ssl.SSLContext | None:
    """The router's client side of the relay stream's mutual TLS (None: plaintext).

    The replica's certificate is checked against ``server_name`` when set, else against the address dialled,
    as the gRPC channel does (:func:`relay_server_name`).
    """
    return _internal_context(cfg, ssl.Purpose.SERVER_AUTH)


def _internal_context(cfg: InternalTLSConfig | None, purpose: ssl.Purpose) -> ssl.SSLContext | None:
    if cfg is None or not cfg.enabled:
        return None
    for field in ("ca_file", "cert_file", "key_file"):
        _read(f"internal_tls.{field}", getattr(cfg, field))
    ctx = ssl.create_default_context(purpose, cafile=cfg.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)  # type: ignore[arg-type]
    return ctx


def relay_server_name(cfg: InternalTLSConfig | None, host: str) -> str | None:
    if cfg is None or not cfg.enabled:
        return None
    return cfg.server_name or host
