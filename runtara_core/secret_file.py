"""Secrets generated once into a file (mode 0600) and reused by every later start.

Two processes starting at once must end up with the same secret, and neither may ever read a
half-written file: the secret is written to a private temporary file first and then linked into
place, which fails if another process got there first (whose secret is then read instead).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from runtara_core.errors import ConfigError


def new_secret() -> str:
    """256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def read_or_create_secret(path: Path) -> str:
    """The secret stored at ``path``, generating it (mode 0600) if the file does not exist."""
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (new_secret() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and refuses to replace a secret another process wrote
        _fsync_dir(path.parent)  # a crash must not forget the secret that tokens were minted with
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    stored = _read(path)
    if stored is None:
        raise ConfigError(f"secret file {path} is empty; delete it to have a new one generated")
    return stored


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"secret file {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
        )
    return text or None
