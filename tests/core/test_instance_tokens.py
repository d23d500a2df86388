"""Instance tokens and the generated secret they are signed with."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from runtara_core.config import Settings
from runtara_core.errors import ConfigError
from runtara_core.instance_tokens import InstanceTokens, load_instance_tokens, secret_path
from runtara_core.secret_file import read_or_create_secret


def test_a_token_binds_one_instance_and_one_attempt() -> None:
    tokens = InstanceTokens("s" * 32)
    token = tokens.mint("order-1", 1)
    assert tokens.verify(token, "order-1", 1)
    assert not tokens.verify(token, "order-2", 1)
    assert not tokens.verify(token, "order-1", 2)
    assert not tokens.verify(token[:-1], "order-1", 1)
    assert not InstanceTokens("t" * 32).verify(token, "order-1", 1)
    # No ambiguity between id and attempt: "a1" + 1 is not "a" + 11.
    assert tokens.mint("a1", 1) != tokens.mint("a", 11)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        InstanceTokens("short")


def test_the_secret_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = load_instance_tokens(settings)
    path = secret_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_instance_tokens(settings)
    assert first.mint("x", 1) == again.mint("x", 1)


def test_a_configured_secret_wins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", instance_secret="c" * 20)
    assert load_instance_tokens(settings).mint("x", 1) == InstanceTokens("c" * 20).mint("x", 1)
    assert not secret_path(settings).exists()


def test_a_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("x" * 40)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_or_create_secret(path)


def _read_secret(path: str, queue: multiprocessing.Queue) -> None:
    queue.put(read_or_create_secret(Path(path)))


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "data" / "instance-secret"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_read_secret, args=(str(path), queue)) for _ in range(6)]
    for worker in workers:
        worker.start()
    secrets = {queue.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(timeout=60)
    assert len(secrets) == 1 and secrets == {read_or_create_secret(path)}
    assert [p.name for p in path.parent.iterdir()] == ["instance-secret"]  # no temporary left
