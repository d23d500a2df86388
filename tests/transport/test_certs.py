import ipaddress
import multiprocessing
import stat

import pytest
from cryptography import x509

from runtara_core.config import load_settings
from runtara_core.errors import ConfigError
from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates
from runtara_core.transport.tls import resolve_client_tls, resolve_server_tls


def test_generates_once_then_reuses(tmp_path):
    first = ensure_dev_certificates(tmp_path)
    before = {p: p.read_bytes() for p in (first.ca_cert, first.ca_key, first.server_cert, first.server_key)}
    second = ensure_dev_certificates(tmp_path)
    assert second == first
    assert {p: p.read_bytes() for p in before} == before


def test_private_keys_are_owner_only(tmp_path):
    certs = ensure_dev_certificates(tmp_path)
    for key in (certs.ca_key, certs.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_server_certificate_names_loopback_and_chains_to_the_ca(tmp_path):
    certs = ensure_dev_certificates(tmp_path)
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)


def test_a_missing_server_certificate_is_regenerated_under_the_same_ca(tmp_path):
    certs = ensure_dev_certificates(tmp_path)
    ca_before = certs.ca_cert.read_bytes()
    certs.server_cert.unlink()
    ensure_dev_certificates(tmp_path)
    assert certs.ca_cert.read_bytes() == ca_before
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))


def _generate(path: str) -> bytes:
    return ensure_dev_certificates(__import__("pathlib").Path(path)).ca_cert.read_bytes()


def test_concurrent_first_starts_agree_on_one_ca(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        cas = pool.map(_generate, [str(tmp_path)] * 4)
    assert len(set(cas)) == 1
    assert (tmp_path / "dev-ca.pem").read_bytes() == cas[0]


def test_configured_paths_override_the_generated_ones(tmp_path, monkeypatch):
    mine = ensure_dev_certificates(tmp_path / "mine")
    monkeypatch.setenv("RUNTARA_CERTS_DIR", str(tmp_path / "generated"))
    monkeypatch.setenv("RUNTARA_TLS_CERT", str(mine.server_cert))
    monkeypatch.setenv("RUNTARA_TLS_KEY", str(mine.server_key))
    monkeypatch.setenv("RUNTARA_TLS_CA", str(mine.ca_cert))
    settings = load_settings()
    assert resolve_server_tls(settings).cert == mine.server_cert
    assert resolve_client_tls(settings).ca == mine.ca_cert
    assert not (tmp_path / "generated").exists()


def test_half_configured_tls_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTARA_TLS_CERT", str(tmp_path / "server.pem"))
    with pytest.raises(ConfigError, match="RUNTARA_TLS_CERT/RUNTARA_TLS_KEY: set both"):
        resolve_server_tls(load_settings())


def test_client_without_a_ca_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTARA_CERTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="RUNTARA_TLS_CA: no CA certificate"):
        resolve_client_tls(load_settings())
    monkeypatch.setenv("RUNTARA_TLS_INSECURE", "true")
    assert resolve_client_tls(load_settings()).insecure


def test_dev_paths_live_in_the_certs_dir(tmp_path):
    paths = DevCertificates.in_dir(tmp_path)
    assert all(p.parent == tmp_path for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key))
