"""Which TLS material a server presents and which CA a client trusts, from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from runtara_core.config import Settings
from runtara_core.errors import ConfigError
from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ClientTls:
    ca: Path | None
    insecure: bool = False


def resolve_server_tls(settings: Settings) -> ServerTls:
    """Configured certificate and key, else the generated development ones."""
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise ConfigError(
                "invalid setting RUNTARA_TLS_CERT/RUNTARA_TLS_KEY: set both, or neither to use "
                "the generated development certificate"
            )
        for name, path in (("RUNTARA_TLS_CERT", settings.tls_cert), ("RUNTARA_TLS_KEY", settings.tls_key)):
            if not path.is_file():
                raise ConfigError(f"invalid setting {name}: no file at {path}")
        return ServerTls(cert=settings.tls_cert, key=settings.tls_key)
    dev = ensure_dev_certificates(settings.certs_dir)
    return ServerTls(cert=dev.server_cert, key=dev.server_key)


def resolve_client_tls(settings: Settings) -> ClientTls:
    """Configured CA, else the development CA (which a server start generates)."""
    if settings.tls_insecure:
        return ClientTls(ca=None, insecure=True)
    ca = settings.tls_ca or DevCertificates.in_dir(settings.certs_dir).ca_cert
    if not ca.is_file():
        raise ConfigError(
            f"invalid setting RUNTARA_TLS_CA: no CA certificate at {ca} (start the server once "
            "to generate the development CA, or point RUNTARA_TLS_CA at your CA)"
        )
    return ClientTls(ca=ca)
