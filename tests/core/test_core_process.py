"""``runtara-core`` as a real process: starts on the embedded defaults, serves QUIC, stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtara_core.errors import TransportError, Unauthenticated, UnknownOp
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls

BIN = Path(sys.executable).parent


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTARA_")}
    env.update(
        RUNTARA_DATA_DIR=str(tmp_path / "data"),
        RUNTARA_CERTS_DIR=str(tmp_path / "certs"),
        RUNTARA_CORE_ADDR=f"127.0.0.1:{free_udp_port()}",
        **extra,
    )
    return env


async def connect_when_up(port: int, ca: Path, process: subprocess.Popen, budget_s: float = 30) -> RpcClient:
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if ca.exists():
            client = RpcClient(
                "127.0.0.1", port, alpn=INSTANCE_ALPN, tls=ClientTls(ca), options=ClientOptions(connect_timeout_s=2)
            )
            try:
                await client.connect()
                return client
            except TransportError:
                await client.close()
        await asyncio.sleep(0.1)
    raise AssertionError("runtara-core did not come up")


async def test_core_starts_on_defaults_serves_and_stops_on_sigterm(tmp_path):
    env = clean_env(tmp_path)
    port = int(env["RUNTARA_CORE_ADDR"].rsplit(":", 1)[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "runtara_core"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        client = await connect_when_up(port, tmp_path / "certs" / "dev-ca.pem", process)
        with pytest.raises(UnknownOp):
            await client.call({"op": "no_such_op"})
        with pytest.raises(Unauthenticated, match="register"):
            await client.call({"op": "status"})
        await client.close()
        secret = tmp_path / "data" / "instance-secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert (tmp_path / "data" / "runtara.db").is_file()
        for key in (tmp_path / "certs").glob("*.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_invalid_setting_stops_the_core_with_one_clear_line(tmp_path):
    env = clean_env(tmp_path, RUNTARA_MAX_FRAME_BYTES="huge")
    result = subprocess.run(
        [sys.executable, "-m", "runtara_core"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RUNTARA_MAX_FRAME_BYTES" in lines[0]


def test_a_taken_address_stops_the_core_with_one_clear_line(tmp_path):
    env = clean_env(tmp_path)
    host, port = env["RUNTARA_CORE_ADDR"].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((host, int(port)))
        result = subprocess.run(
            [sys.executable, "-m", "runtara_core"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert "runtara-core: cannot start" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("script", ["runtara-environment", "runtara-ctl"])
def test_installed_commands_explain_themselves(script, tmp_path):
    path = BIN / script
    if not path.exists():
        pytest.skip(f"{script} is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and "RUNTARA_" in result.stdout, result.stderr


async def test_embedded_core_that_cannot_listen_closes_the_database_it_opened(tmp_path, monkeypatch):
    from runtara_core.config import load_settings
    from runtara_core.server import CoreServer

    env = clean_env(tmp_path)
    for name, value in env.items():
        if name.startswith("RUNTARA_"):
            monkeypatch.setenv(name, value)
    host, port = env["RUNTARA_CORE_ADDR"].rsplit(":", 1)
    server = CoreServer(load_settings())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((host, int(port)))
        with pytest.raises(OSError):
            await server.start()
    assert server.persistence is None and server.address is None
