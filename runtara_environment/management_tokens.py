"""Management authentication: bearer tokens, and the tenant each one may act on (DESIGN 9).

A management connection presents one bearer token in ``hello``. ``ManagementTokens.verify`` turns
it into a ``Principal``: an admin (every tenant) or one tenant. Every tenant-scoped operation then
asks the principal which tenant it acts on (``Principal.scope``) and which stored rows it may see
(``Principal.can_see`` / ``Principal.require_visible``).

Where tokens come from: ``RUNTARA_TOKENS_FILE`` (a JSON object token -> tenant, ``"*"`` = admin)
when set; otherwise one development admin token generated once into ``<data dir>/admin-token``
(mode 0600), which ``runtara-ctl`` finds there by itself (``find_client_token``).

Refusals, and why each one reveals nothing:

- no token, or one that is not known: ``Unauthenticated``. The message never echoes the presented
  token (it might be a real token of another system pasted by mistake, and logs keep messages).
- a tenant principal explicitly naming another tenant: ``Forbidden``. The answer depends only on
  the principal and the requested name, never on stored data, so it is the same whether or not
  that tenant exists; and it tells the caller the actual problem (the token, not a missing row).
- a tenant principal naming a row (image, instance) of another tenant: ``NotFound``, the same
  error and message as for a row that does not exist (``require_visible``), so ids of other
  tenants cannot be probed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtara_core.errors import BadRequest, ConfigError, Forbidden, NotFound, Unauthenticated
from runtara_core.secret_file import read_or_create_secret

ADMIN = "*"
"""The tenant value (in a tokens file) that means "every tenant"."""

ADMIN_TOKEN_FILE = "admin-token"
"""Name of the generated development admin token inside the data directory."""

MIN_TOKEN_LENGTH = 16
MAX_TENANT_BYTES = 255

_NO_SUCH_TOKEN_HINT = (
    "use the admin token in the server's data directory (RUNTARA_DATA_DIR/admin-token) "
    "or one from RUNTARA_TOKENS_FILE, and pass it as RUNTARA_TOKEN"
)


def admin_token_path(data_dir: Path) -> Path:
    """Where the development admin token lives (the server writes it, the CLI reads it)."""
    return data_dir / ADMIN_TOKEN_FILE


def tenant_name_problem(tenant: str) -> str | None:
    """Why ``tenant`` cannot be a tenant name, or None if it can.

    Tenants are stored and compared as plain text; NUL breaks PostgreSQL text columns and an
    unbounded name would let one request bloat every row it tags.
    """
    if not tenant:
        return "tenant name is empty"
    if "\x00" in tenant:
        return "tenant name contains a NUL character"
    if len(tenant.encode("utf-8", "surrogatepass")) > MAX_TENANT_BYTES:
        return f"tenant name is longer than {MAX_TENANT_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: ``tenant`` None is an admin (every tenant), else exactly that tenant."""

    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def scope(self, requested_tenant: str | None) -> str | None:
        """The tenant an operation acts on, given the tenant the request names (if any).

        - admin, no tenant named: None, meaning every tenant (listing, watching); an operation
          that creates something must itself insist on a tenant.
        - admin, a tenant named: that tenant.
        - tenant principal, no tenant or its own named: its own tenant.
        - tenant principal naming another tenant: ``Forbidden`` (see the module docstring).

        A named tenant that could never exist (empty, NUL, too long, ``"*"``) is ``BadRequest``
        for everyone, so admins cannot create rows no tenant token could ever reach.
        """
        if requested_tenant is not None:
            problem = tenant_name_problem(requested_tenant)
            if problem is None and requested_tenant == ADMIN:
                problem = f'"{ADMIN}" is not a tenant; name no tenant to mean every tenant'
            if problem is not None:
                raise BadRequest(problem)
        if self.tenant is None:
            return requested_tenant
        if requested_tenant is None or requested_tenant == self.tenant:
            return self.tenant
        raise Forbidden("this token may act only on its own tenant")

    def can_see(self, tenant: str) -> bool:
        """Whether a stored row of ``tenant`` is visible to this principal (for filtering)."""
        return self.tenant is None or self.tenant == tenant

    def require_visible(self, tenant: str | None, what: str) -> None:
        """Raise ``NotFound`` unless the row exists (``tenant`` not None) and is visible.

        ``what`` (e.g. ``"instance order-1"``) is what the caller asked for, so the message is the
        same for a missing row and for another tenant's row.
        """
        if tenant is None or not self.can_see(tenant):
            raise NotFound(f"{what} not found")


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests hides the known tokens' lengths as well as their contents.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class ManagementTokens:
    """The known bearer tokens and the principal each one stands for.

    Only SHA-256 digests are kept, so neither ``repr`` nor a memory dump of this object hands out
    a usable token.
    """

    def __init__(self, tokens: Mapping[str, str], *, hint: str = _NO_SUCH_TOKEN_HINT) -> None:
        """``tokens`` maps token -> tenant (``ADMIN`` = admin); ``hint`` ends the refusal message."""
        self._entries: list[tuple[bytes, Principal]] = []
        for token, tenant in tokens.items():
            if not token.strip():
                raise ValueError("a management token is empty")
            if tenant != ADMIN and (problem := tenant_name_problem(tenant)) is not None:
                raise ValueError(problem)
            principal = Principal(None if tenant == ADMIN else tenant)
            self._entries.append((_digest(token), principal))
        self._hint = hint

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ManagementTokens({len(self._entries)} tokens)"

    def verify(self, presented: str | None) -> Principal:
        """The principal of ``presented``, or ``Unauthenticated`` (never echoing the token).

        Every known token is compared, in constant time, whatever matched earlier, so timing
        tells neither whether nor which token matched.
        """
        if presented is None or not presented.strip():
            raise Unauthenticated(f"no token presented; {self._hint}")
        presented_digest = _digest(presented)
        found: Principal | None = None
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented_digest):
                found = principal
        if found is None:
            raise Unauthenticated(f"no such token; {self._hint}")
        return found


def load_tokens(*, tokens_file: Path | None, data_dir: Path) -> ManagementTokens:
    """The server's tokens: those of ``tokens_file`` if given, else the dev admin token.

    Without a tokens file, ``<data_dir>/admin-token`` is generated on the first start (mode 0600,
    safe against two servers starting at once) and reused afterwards.
    """
    if tokens_file is None:
        path = admin_token_path(data_dir)
        token = read_or_create_secret(path)
        return ManagementTokens(
            {token: ADMIN},
            hint=(
                "use the admin token in the server's data directory (RUNTARA_DATA_DIR/"
                f"{ADMIN_TOKEN_FILE}) as RUNTARA_TOKEN, or run runtara-ctl with the same "
                "RUNTARA_DATA_DIR so it finds it"
            ),
        )
    return ManagementTokens(
        _read_tokens_file(tokens_file),
        hint="use a token from the server's RUNTARA_TOKENS_FILE as RUNTARA_TOKEN",
    )


_JSON_KINDS: dict[type, str] = {
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
    list: "an array",
    dict: "an object",
}


def _read_tokens_file(path: Path) -> dict[str, str]:
    """The validated token -> tenant map of a tokens file; ``ConfigError`` naming file and fault."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"RUNTARA_TOKENS_FILE {path}: {problem}")

    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, expected a JSON file") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror})") from None
    if mode & 0o077:
        raise fail(f"is accessible to group or others (mode {mode:o}); run: chmod 600 {path}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("is not UTF-8 text") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise fail("a token appears twice")
            result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise fail(
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise fail(f'expected a JSON object of token to tenant ("{ADMIN}" = admin)')
    if not data:
        raise fail("has no tokens, so nobody could connect")
    tokens: dict[str, str] = {}
    # Entries are numbered, never quoted: the message must not print a secret.
    for number, (token, tenant) in enumerate(data.items(), start=1):
        entry = f"entry {number}"
        if not token.strip():
            raise fail(f"{entry} has an empty token")
        if token != token.strip():
            raise fail(f"{entry} has a token with leading or trailing whitespace")
        if len(token) < MIN_TOKEN_LENGTH:
            raise fail(f"{entry} has a token shorter than {MIN_TOKEN_LENGTH} characters")
        if not isinstance(tenant, str):
            kind = _JSON_KINDS.get(type(tenant), type(tenant).__name__)
            raise fail(f"{entry} maps to {kind}, expected a tenant name string")
        if tenant != ADMIN and (problem := tenant_name_problem(tenant)) is not None:
            raise fail(f"{entry}: {problem}")
        tokens[token] = tenant
    return tokens


def find_client_token(*, explicit: str | None, data_dir: Path) -> str:
    """The token ``runtara-ctl`` sends: ``RUNTARA_TOKEN``, else the dev admin token file.

    An explicitly set but empty ``RUNTARA_TOKEN`` is an error rather than a fallback, so blanking
    a tenant token never silently turns a command into an admin one.
    """
    if explicit is not None:
        token = explicit.strip()
        if not token:
            raise ConfigError("RUNTARA_TOKEN is set but empty; set a token or unset it")
        return token
    path = admin_token_path(data_dir)
    if path.exists():
        return read_or_create_secret(path)  # reads it, refusing a file others can read
    raise ConfigError(
        f"no management token: set RUNTARA_TOKEN, or set RUNTARA_DATA_DIR to the server's data "
        f"directory (no {ADMIN_TOKEN_FILE} in {data_dir})"
    )
