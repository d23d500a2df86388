"""runtara-ctl without a server: argument parsing of the fixed surface, exit codes, error lines,
register_image request building, and failures before or at connect time."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from runtara_core.errors import (
    BadRequest,
    ConfigError,
    ConnectionLost,
    HandshakeError,
    NotFound,
    RequestTimeout,
)
from runtara_core.transport.certs import ensure_dev_certificates
from runtara_core.wire.management_messages import InstanceDetail
from runtara_environment import ctl
from runtara_environment.client import (
    FRAME_MARGIN_BYTES,
    ManagementClient,
    build_image_upload,
    read_image_source,
    upload_timeout_s,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str):
    return ctl.parse_args(list(argv))


# --- the fixed surface (DESIGN section 11) -------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["health"], {"command": "health"}),
        (["migrate"], {"command": "migrate"}),
        (["image", "list"], {"image_command": "list"}),
        (["image", "get", "img-1"], {"image_command": "get", "image": "img-1"}),
        (["image", "delete", "orders"], {"image_command": "delete", "image": "orders"}),
        (
            ["instance", "start", "orders", "--input", '{"n": 1}', "--id", "o-1", "--timeout", "30",
             "--max-attempts", "5", "--wait"],
            {"image": "orders", "input_value": {"n": 1}, "instance_id": "o-1", "timeout": 30.0,
             "max_attempts": 5, "wait": True},
        ),
        (["instance", "start", "orders"], {"input_value": None, "input_file_value": None, "wait": False}),
        (["instance", "get", "o-1"], {"instance_command": "get", "instance_id": "o-1"}),
        (["instance", "list"], {"instance_command": "list", "status": None, "image": None}),
        (["instance", "list", "--status", "failed", "--image", "orders"],
         {"status": [["failed"]], "image": "orders"}),
        (["instance", "wait", "o-1"], {"instance_command": "wait", "instance_id": "o-1"}),
        (["instance", "watch", "o-1"], {"instance_command": "watch", "instance_id": "o-1"}),
        (["instance", "stop", "o-1"], {"instance_command": "stop", "grace": 10.0}),
        (["instance", "stop", "o-1", "--grace", "2.5"], {"grace": 2.5}),
        (["instance", "stop", "o-1", "--grace", "0"], {"grace": 0.0}),
        (["instance", "resume", "o-1"], {"instance_command": "resume", "instance_id": "o-1"}),
        (["instance", "logs", "o-1"], {"instance_command": "logs"}),
        (["instance", "events", "o-1"], {"instance_command": "events"}),
        (["instance", "checkpoints", "o-1"], {"instance_command": "checkpoints"}),
        (["signal", "cancel", "o-1"], {"signal": "cancel", "instance_id": "o-1"}),
        (["signal", "pause", "o-1"], {"signal": "pause"}),
        (["signal", "resume", "o-1"], {"signal": "resume"}),
        (["signal", "send", "o-1", "approval", "--payload", '{"ok": true}'],
         {"signal_command": "send", "name": "approval", "payload": {"ok": True}}),
        (["signal", "send", "o-1", "approval"], {"payload": None}),
        (["serve"], {"command": "serve", "serve_args": []}),
        (["serve", "--log-level", "DEBUG"], {"serve_args": ["--log-level", "DEBUG"]}),
    ],
)
def test_every_command_of_the_fixed_surface_parses(argv: list[str], expected: dict) -> None:
    args = parse(*argv)
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    assert args.json is False


def test_image_register_reads_the_file_before_connecting(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text("async def main(ctx, x):\n    return x\n")
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}')
    args = parse("image", "register", str(flow), "--name", "flow", "--entrypoint", "flow:main",
                 "--schema", str(schema), "--description", "a flow", "--metadata", "team=x")
    assert (args.name, args.entrypoint, args.description) == ("flow", "flow:main", "a flow")
    assert args.schema == {"type": "object"}
    assert args.metadata == [("team", "x")]
    assert args.image_data == flow.read_bytes() and args.image_filename == "flow.py"


@pytest.mark.parametrize("position", ["before", "after"])
def test_json_addr_and_token_work_before_or_after_the_subcommand(position: str) -> None:
    options = ["--json", "--addr", "10.0.0.1:9000", "--token", "t0k3n"]
    argv = [*options, "instance", "get", "o-1"] if position == "before" else ["instance", "get", "o-1", *options]
    args = parse(*argv)
    assert (args.json, args.addr, args.token) == (True, "10.0.0.1:9000", "t0k3n")


def test_json_on_every_leaf_command() -> None:
    for argv in (["health"], ["image", "list"], ["instance", "list"], ["signal", "cancel", "x"], ["migrate"]):
        assert parse(*argv, "--json").json is True


def test_input_file_is_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text('[1, 2, 3]')
    assert parse("instance", "start", "orders", "--input-file", str(path)).input_file_value == [1, 2, 3]


def test_input_and_input_file_are_mutually_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text("{}")
    with pytest.raises(ctl.UsageError, match="not allowed with"):
        parse("instance", "start", "orders", "--input", "{}", "--input-file", str(path))


def test_status_filter_accepts_commas_and_refuses_unknown_statuses() -> None:
    assert parse("instance", "list", "--status", "running,failed").status == [["running", "failed"]]
    with pytest.raises(ctl.UsageError, match="unknown status"):
        parse("instance", "list", "--status", "exploded")


@pytest.mark.parametrize(
    "argv",
    [
        ["instance", "start", "orders", "--input", "{not json"],
        ["signal", "send", "o-1", "go", "--payload", "[1,"],
        ["instance", "start", "orders", "--timeout", "-1"],
        ["instance", "start", "orders", "--env", "NOEQUALS"],
        ["instance", "frobnicate"],
        ["image", "register", "/nonexistent/flow.py", "--name", "x"],
        ["image", "register", "flow.py"],
        [],
    ],
)
def test_bad_arguments_are_one_line_exit_2_without_connecting(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_network(*_a, **_k):
        raise AssertionError("must not connect")

    monkeypatch.setattr(ManagementClient, "from_settings", no_network)
    assert ctl.main(argv) == ctl.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("runtara-ctl: usage: "), captured.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "runtara-ctl serve" in out
    assert ctl.main(["instance", "start", "--help"]) == 0


# --- exit codes and error lines --------------------------------------------------------------------


def _detail(status: str) -> InstanceDetail:
    return InstanceDetail(
        instance_id="o-1", tenant="t", image="i", image_name="n", status=status, attempt=1,
        created_at_ms=1, max_attempts=3,
    )


def test_wait_exit_codes_are_distinct_per_outcome() -> None:
    assert ctl.wait_exit_code(_detail("completed")) == 0
    assert ctl.wait_exit_code(_detail("failed")) == 1
    cancelled = ctl.wait_exit_code(_detail("cancelled"))
    assert cancelled not in (0, 1, 2)
    assert ctl.wait_exit_code(_detail("running")) not in (0, 1, cancelled)
    assert str(cancelled) in ctl.EPILOG


def test_error_lines() -> None:
    assert ctl.describe_error(NotFound("instance x not found"), "h:1") == (
        "NOT_FOUND: instance x not found", ctl.EXIT_SERVER_ERROR
    )
    line, code = ctl.describe_error(ConnectionLost("Connection refused"), "127.0.0.1:8002")
    assert "127.0.0.1:8002" in line and "runtara-ctl serve" in line and code == ctl.EXIT_UNREACHABLE
    line, code = ctl.describe_error(HandshakeError("TLS handshake refused"), "h:1")
    assert "h:1" in line and code == ctl.EXIT_UNREACHABLE
    assert ctl.describe_error(ConfigError("invalid setting RUNTARA_X"), None)[1] == ctl.EXIT_USAGE
    assert ctl.describe_error(RequestTimeout("nothing"), "h:1")[1] == ctl.EXIT_UNREACHABLE
    assert ctl.describe_error(ValueError("odd"), None)[0] == "internal error: ValueError: odd"


# --- register_image request building ------------------------------------------------------------------


def test_small_image_is_sent_inline_with_size_and_sha256() -> None:
    data = b"async def main(ctx, x):\n    return x\n"
    upload = build_image_upload(data, filename="flow.py", name="flow", max_frame_bytes=16 * 1024 * 1024,
                                entrypoint="flow:main", metadata={"a": "b"})
    assert not upload.streamed
    assert upload.request.data == data
    assert upload.request.size_bytes == len(data)
    assert upload.request.sha256 == hashlib.sha256(data).hexdigest()
    assert upload.request.entrypoint == "flow:main" and upload.request.metadata == {"a": "b"}


def test_image_near_the_frame_limit_is_streamed_after_the_frame() -> None:
    max_frame = 1024 * 1024
    fits = b"x" * (max_frame - FRAME_MARGIN_BYTES - 1024)
    assert not build_image_upload(fits, filename="a.py", name="a", max_frame_bytes=max_frame).streamed
    too_big = b"x" * (max_frame - FRAME_MARGIN_BYTES + 1)
    upload = build_image_upload(too_big, filename="a.py", name="a", max_frame_bytes=max_frame)
    assert upload.streamed and upload.body == too_big
    assert upload.request.data is None and upload.request.size_bytes == len(too_big)
    assert upload.request.sha256 == hashlib.sha256(too_big).hexdigest()


def test_image_request_fields_are_validated_before_sending() -> None:
    with pytest.raises(BadRequest, match="entrypoint"):
        build_image_upload(b"x", filename="a.py", name="a", max_frame_bytes=1 << 20, entrypoint="nocolon")
    with pytest.raises(BadRequest, match="empty"):
        build_image_upload(b"", filename="a.py", name="a", max_frame_bytes=1 << 20)


def test_upload_timeout_grows_with_size() -> None:
    assert upload_timeout_s(0) == 30.0
    assert upload_timeout_s(400 * 1024 * 1024) == 130.0


def test_directory_is_archived_as_dirname_tar_gz(tmp_path: Path) -> None:
    source = tmp_path / "myflow"
    (source / "pkg").mkdir(parents=True)
    (source / "fanout.py").write_text("async def main(ctx, x): return x\n")
    (source / "pkg" / "__init__.py").write_text("")
    (source / "pkg" / "__pycache__").mkdir()
    (source / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    data, filename = read_image_source(source)
    assert filename == "myflow.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tf:
        assert sorted(tf.getnames()) == ["fanout.py", "pkg", "pkg/__init__.py"]
    assert read_image_source(source)[0] == data  # deterministic: same tree, same sha256


def test_files_are_sent_as_is_and_bytes_need_a_filename(tmp_path: Path) -> None:
    archive = tmp_path / "flow.tgz"
    archive.write_bytes(b"\x1f\x8b rest")
    assert read_image_source(archive) == (b"\x1f\x8b rest", "flow.tgz")
    assert read_image_source(b"abc", "x.py") == (b"abc", "x.py")
    with pytest.raises(BadRequest, match="filename"):
        read_image_source(b"abc")
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(BadRequest, match="neither"):
        read_image_source(other)


# --- failures at connect time ------------------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ctl(env_overrides: dict[str, str], *argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTARA_")}
    env.update(env_overrides)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "runtara_environment.ctl", *argv],
        env=env, capture_output=True, text=True, timeout=timeout_s, cwd=env_overrides["RUNTARA_DATA_DIR"],
    )


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    certs = tmp_path / "certs"
    ensure_dev_certificates(certs)
    data = tmp_path / "data"
    data.mkdir()
    return {"RUNTARA_DATA_DIR": str(data), "RUNTARA_CERTS_DIR": str(certs), "RUNTARA_TOKEN": "a-test-token-0123456789"}


def test_nothing_listening_is_one_line_and_a_non_zero_exit_in_bounded_time(client_env: dict[str, str]) -> None:
    port = _free_udp_port()
    started = time.monotonic()
    result = _run_ctl(client_env, "health", "--addr", f"127.0.0.1:{port}", "--connect-timeout", "2")
    assert time.monotonic() - started < 20
    assert result.returncode == ctl.EXIT_UNREACHABLE
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runtara-ctl: ") and f"127.0.0.1:{port}" in lines[0]
    assert "runtara-ctl serve" in lines[0] and "Traceback" not in result.stderr


def test_missing_token_is_one_clear_line(client_env: dict[str, str]) -> None:
    env = {k: v for k, v in client_env.items() if k != "RUNTARA_TOKEN"}
    result = _run_ctl(env, "instance", "list", "--json")
    assert result.returncode == ctl.EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "RUNTARA_TOKEN" in lines[0], result.stderr


def test_missing_ca_is_one_clear_line(client_env: dict[str, str], tmp_path: Path) -> None:
    env = {**client_env, "RUNTARA_CERTS_DIR": str(tmp_path / "no-certs")}
    result = _run_ctl(env, "health")
    assert result.returncode == ctl.EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "RUNTARA_TLS_CA" in lines[0], result.stderr


def test_bad_setting_is_one_line_exit_2(client_env: dict[str, str]) -> None:
    result = _run_ctl(client_env, "health", "--addr", "no-port-here")
    assert result.returncode == ctl.EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "RUNTARA_ENV_ADDR" in lines[0], result.stderr
