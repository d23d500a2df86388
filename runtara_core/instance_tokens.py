"""Instance tokens: what proves that a connection speaks for one launch of one instance.

A token is an HMAC-SHA256 of the instance id and launch attempt under a server secret, so the
core verifies it without a database read and a token leaked from one launch is useless for
another instance or for a later attempt of the same one. The environment mints a token per
launch (``InstanceTokens.mint``) and hands it to the child process only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from runtara_core.config import Settings
from runtara_core.secret_file import read_or_create_secret

SECRET_FILE_NAME = "instance-secret"
_DOMAIN = b"runtara-instance-token/1"


class InstanceTokens:
    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < 16:
            raise ValueError("the instance token secret must be at least 16 bytes")
        self._key = key

    def mint(self, instance_id: str, attempt: int) -> str:
        message = b"\0".join((_DOMAIN, instance_id.encode(), str(attempt).encode()))
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(self, token: str, instance_id: str, attempt: int) -> bool:
        # As bytes: compare_digest refuses str with non-ASCII characters.
        return hmac.compare_digest(self.mint(instance_id, attempt).encode(), token.encode("utf-8", "replace"))


def secret_path(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE_NAME


def load_instance_tokens(settings: Settings) -> InstanceTokens:
    """Tokens under ``RUNTARA_INSTANCE_SECRET``, else a secret generated once into the data dir.

    The core and the environment that mints for it must share the secret: embedded, they read
    the same file.
    """
    if settings.instance_secret is not None:
        return InstanceTokens(settings.instance_secret.get_secret_value())
    return InstanceTokens(read_or_create_secret(secret_path(settings)))
