"""The messages between the environment and its pre-forked launcher (fork_messages): pure.

Every message survives a round trip through its dict form and through a real frame (msgpack);
every malformed field is refused with BadRequest, never a crash or a silently wrong value.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtara_core.errors import BadRequest, FrameTooLarge
from runtara_core.wire.frame_codec import FrameDecoder, encode_frame, unpack_payload
from runtara_environment.fork_messages import (
    MAX_FORK_MESSAGE_BYTES,
    ForkFailed,
    Forked,
    ForkRequest,
    Ready,
    parse_launcher_message,
)

REQUEST = ForkRequest(
    env={"PATH": "/usr/bin:/bin", "RUNTARA_INSTANCE_ID": "i-1", "EMPTY": "", "WITH_EQUALS": "a=b=c", "ÜNI": "wért"},
    cwd="/data/runs/i-1",
    stdout_path="/data/runs/i-1/stdout.log",
    stderr_path="/data/runs/i-1/stderr.log",
    memory_limit_bytes=512 * 1024 * 1024,
    cpu_limit_s=30,
)


def through_a_frame(message: dict[str, Any]) -> Any:
    """What the other side decodes: framed, split into single bytes, decoded."""
    frame = encode_frame(message, MAX_FORK_MESSAGE_BYTES)
    decoder = FrameDecoder(MAX_FORK_MESSAGE_BYTES)
    payloads = [p for i in range(len(frame)) for p in decoder.feed(frame[i : i + 1])]
    assert len(payloads) == 1
    return unpack_payload(payloads[0])


def with_field(message: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(message)
    changed[name] = value
    return changed


def without_field(message: dict[str, Any], name: str) -> dict[str, Any]:
    changed = copy.deepcopy(message)
    del changed[name]
    return changed


# --------------------------------------------------------------------------- round trips


def test_fork_request_round_trips() -> None:
    message = REQUEST.to_message()
    assert message["kind"] == "fork"
    assert ForkRequest.from_message(message) == REQUEST
    assert ForkRequest.from_message(through_a_frame(message)) == REQUEST


def test_fork_request_limits_are_optional() -> None:
    bare = ForkRequest(env={}, cwd="/", stdout_path="/out", stderr_path="/err")
    assert bare.to_message()["memory_limit_bytes"] is None and bare.to_message()["cpu_limit_s"] is None
    assert ForkRequest.from_message(through_a_frame(bare.to_message())) == bare
    message = without_field(without_field(bare.to_message(), "memory_limit_bytes"), "cpu_limit_s")
    assert ForkRequest.from_message(message) == bare  # absent is the same as None


def test_fork_request_keeps_env_out_of_reach_of_the_caller() -> None:
    env = {"A": "1"}
    message = ForkRequest(env=env, cwd="/", stdout_path="/o", stderr_path="/e").to_message()
    message["env"]["B"] = "2"
    assert env == {"A": "1"}  # to_message copies the mapping


@pytest.mark.parametrize(
    "message",
    [Ready(pid=4242, ready_ms=0), Ready(pid=1, ready_ms=612), Forked(pid=99999), ForkFailed("fork failed: EAGAIN"), ForkFailed()],
    ids=repr,
)
def test_launcher_messages_round_trip(message: Ready | Forked | ForkFailed) -> None:
    assert parse_launcher_message(message.to_message()) == message
    assert parse_launcher_message(through_a_frame(message.to_message())) == message


env_names = st.text(
    alphabet=st.characters(blacklist_characters="=\0", blacklist_categories=("Cs",)), min_size=1, max_size=20
)
env_values = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
abs_paths = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40).map(
    lambda p: "/" + p
)
limits = st.none() | st.integers(min_value=1, max_value=2**62)


@given(
    env=st.dictionaries(env_names, env_values, max_size=10),
    cwd=abs_paths,
    stdout=abs_paths,
    stderr=abs_paths,
    memory=limits,
    cpu=limits,
)
def test_any_valid_fork_request_round_trips(
    env: dict[str, str], cwd: str, stdout: str, stderr: str, memory: int | None, cpu: int | None
) -> None:
    request = ForkRequest(env, cwd, stdout, stderr, memory, cpu)
    assert ForkRequest.from_message(through_a_frame(request.to_message())) == request


@given(pid=st.integers(min_value=1, max_value=2**31), ready_ms=st.integers(min_value=0, max_value=2**40), error=st.text())
def test_any_valid_launcher_message_round_trips(pid: int, ready_ms: int, error: str) -> None:
    for message in (Ready(pid, ready_ms), Forked(pid), ForkFailed(error)):
        assert parse_launcher_message(through_a_frame(message.to_message())) == message


def test_a_request_too_big_for_a_frame_is_refused_when_encoded() -> None:
    huge = ForkRequest(env={"BIG": "x" * MAX_FORK_MESSAGE_BYTES}, cwd="/", stdout_path="/o", stderr_path="/e")
    with pytest.raises(FrameTooLarge):
        encode_frame(huge.to_message(), MAX_FORK_MESSAGE_BYTES)


# --------------------------------------------------------------------------- malformed requests


NOT_A_FORK_REQUEST = [None, [], "fork", 7, b"fork", {}, {"kind": None}, {"kind": "forked"}, {"kind": "FORK"}, {"kind": "ready"}]


@pytest.mark.parametrize("message", NOT_A_FORK_REQUEST, ids=repr)
def test_not_a_fork_request_is_refused(message: Any) -> None:
    with pytest.raises(BadRequest):
        ForkRequest.from_message(message)


def test_a_request_without_kind_is_refused() -> None:
    with pytest.raises(BadRequest):
        ForkRequest.from_message(without_field(REQUEST.to_message(), "kind"))


BAD_ENVS = [
    None,
    [],
    [["A", "1"]],
    "A=1",
    {1: "one"},
    {b"A": "1"},
    {"A": 1},
    {"A": None},
    {"A": b"1"},
    {"A": ["1"]},
    {"": "empty name"},
    {"A=B": "1"},
    {"=A": "1"},
    {"A\0B": "1"},
    {"A": "1\0 and more"},
    {"OK": "1", "BAD": 2},
]


@pytest.mark.parametrize("env", BAD_ENVS, ids=repr)
def test_a_malformed_env_is_refused(env: Any) -> None:
    with pytest.raises(BadRequest, match="env"):
        ForkRequest.from_message(with_field(REQUEST.to_message(), "env", env))


def test_a_missing_env_is_refused() -> None:
    with pytest.raises(BadRequest, match="env"):
        ForkRequest.from_message(without_field(REQUEST.to_message(), "env"))


BAD_PATHS = [None, "", "relative/dir", "./x", "~/x", 7, b"/bytes", ["/"], "/nul\0byte", {"path": "/"}]


@pytest.mark.parametrize("name", ["cwd", "stdout", "stderr"])
@pytest.mark.parametrize("value", BAD_PATHS, ids=repr)
def test_a_malformed_path_is_refused(name: str, value: Any) -> None:
    with pytest.raises(BadRequest, match=name):
        ForkRequest.from_message(with_field(REQUEST.to_message(), name, value))


@pytest.mark.parametrize("name", ["cwd", "stdout", "stderr"])
def test_a_missing_path_is_refused(name: str) -> None:
    with pytest.raises(BadRequest, match=name):
        ForkRequest.from_message(without_field(REQUEST.to_message(), name))


BAD_LIMITS = [0, -1, -(2**40), True, False, 1.5, 512.0, "512", b"1", [1], {"v": 1}]


@pytest.mark.parametrize("name", ["memory_limit_bytes", "cpu_limit_s"])
@pytest.mark.parametrize("value", BAD_LIMITS, ids=repr)
def test_a_malformed_limit_is_refused(name: str, value: Any) -> None:
    with pytest.raises(BadRequest, match=name):
        ForkRequest.from_message(with_field(REQUEST.to_message(), name, value))


# --------------------------------------------------------------------------- malformed launcher messages


@pytest.mark.parametrize(
    "message",
    [None, [], "ready", 3, {}, {"kind": None}, {"kind": "fork"}, {"kind": "READY"}, {"kind": "unknown"}, REQUEST.to_message()],
    ids=repr,
)
def test_an_unknown_launcher_message_is_refused(message: Any) -> None:
    with pytest.raises(BadRequest):
        parse_launcher_message(message)


BAD_PIDS = [None, 0, -1, True, False, 1.0, "42", b"42", [42]]


@pytest.mark.parametrize("value", [*BAD_PIDS, "absent"], ids=repr)
@pytest.mark.parametrize("kind", ["ready", "forked"])
def test_a_malformed_pid_is_refused(kind: str, value: Any) -> None:
    good = Ready(7, 10).to_message() if kind == "ready" else Forked(7).to_message()
    message = without_field(good, "pid") if value == "absent" else with_field(good, "pid", value)
    with pytest.raises(BadRequest, match="pid"):
        parse_launcher_message(message)


@pytest.mark.parametrize("value", [None, -1, True, False, 1.5, "10", b"10", "absent"], ids=repr)
def test_a_malformed_import_time_is_refused(value: Any) -> None:
    good = Ready(7, 10).to_message()
    message = without_field(good, "ready_ms") if value == "absent" else with_field(good, "ready_ms", value)
    with pytest.raises(BadRequest, match="ready_ms"):
        parse_launcher_message(message)


@pytest.mark.parametrize("value", [None, 1, True, b"failed", ["failed"], {"e": "x"}, "absent"], ids=repr)
def test_a_malformed_failure_is_refused(value: Any) -> None:
    good = ForkFailed("x").to_message()
    message = without_field(good, "error") if value == "absent" else with_field(good, "error", value)
    with pytest.raises(BadRequest, match="error"):
        parse_launcher_message(message)
