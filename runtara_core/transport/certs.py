"""Development TLS material: a local CA and a server certificate, generated once and reused.

Keys are EC P-256 (the handshake signs with the server key on every connection, and ECDSA is
far cheaper than RSA there). Private keys are written with mode 0600. Generation is guarded by
a file lock and atomic renames, so two servers starting at once end with one consistent set.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")
CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=825)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class DevCertificates:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, certs_dir: Path) -> DevCertificates:
        return cls(
            ca_cert=certs_dir / "dev-ca.pem",
            ca_key=certs_dir / "dev-ca.key",
            server_cert=certs_dir / "dev-server.pem",
            server_key=certs_dir / "dev-server.key",
        )


def ensure_dev_certificates(certs_dir: Path) -> DevCertificates:
    """Return the development CA and server certificate in ``certs_dir``, creating what is missing."""
    certs_dir.mkdir(parents=True, exist_ok=True)
    paths = DevCertificates.in_dir(certs_dir)
    with open(certs_dir / ".generate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (paths.ca_cert.exists() and paths.ca_key.exists()):
            _write_ca(paths)
            _write_server(paths)
        elif not (paths.server_cert.exists() and paths.server_key.exists()) or _expires_soon(
            paths.server_cert
        ):
            _write_server(paths)
    return paths


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _expires_soon(cert_path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - _now() < RENEW_BEFORE


def _write_ca(paths: DevCertificates) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Runtara development CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private_key(paths.ca_key, key)
    _write_atomic(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a development CA in %s", paths.ca_cert)


def _write_server(paths: DevCertificates) -> None:
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private_key(paths.server_key, key)
    _write_atomic(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a development server certificate in %s", paths.server_cert)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file created with ``mode``, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
