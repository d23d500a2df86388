"""Management bearer tokens, tenant scoping, the dev admin token and the tokens file."""

from __future__ import annotations

import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from runtara_core.errors import (
    BadRequest,
    ConfigError,
    ErrorCode,
    Forbidden,
    NotFound,
    Unauthenticated,
)
from runtara_environment.management_tokens import (
    ADMIN,
    ManagementTokens,
    Principal,
    admin_token_path,
    find_client_token,
    load_tokens,
)

ADMIN_TOKEN = "admin-token-0123456789"
ACME_TOKEN = "acme-token-0123456789"
GLOBEX_TOKEN = "globex-token-0123456789"


@pytest.fixture
def tokens() -> ManagementTokens:
    return ManagementTokens({ADMIN_TOKEN: ADMIN, ACME_TOKEN: "acme", GLOBEX_TOKEN: "globex"})


def write_tokens_file(path: Path, content: Any, mode: int = 0o600) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    os.chmod(path, mode)
    return path


# --- verify -------------------------------------------------------------------------------------


def test_tokens_verify_to_their_principal(tokens: ManagementTokens) -> None:
    admin = tokens.verify(ADMIN_TOKEN)
    assert admin == Principal(None) and admin.is_admin
    acme = tokens.verify(ACME_TOKEN)
    assert acme == Principal("acme") and not acme.is_admin
    assert tokens.verify(GLOBEX_TOKEN).tenant == "globex"


@pytest.mark.parametrize(
    "presented",
    [
        "wrong-token-0123456789",
        ACME_TOKEN[:-1],  # a prefix of a real token
        ACME_TOKEN + "x",  # a real token with more after it
        ACME_TOKEN.upper(),
        " " + ACME_TOKEN,
        "tökén-with-non-ascii-0123",  # compare_digest on str would raise TypeError
    ],
)
def test_unknown_tokens_are_unauthenticated_without_echo(
    tokens: ManagementTokens, presented: str
) -> None:
    with pytest.raises(Unauthenticated) as caught:
        tokens.verify(presented)
    assert caught.value.code is ErrorCode.UNAUTHENTICATED
    assert presented.strip() not in str(caught.value)
    assert "no such token" in caught.value.message
    assert "RUNTARA_TOKENS_FILE" in caught.value.message  # says what to use instead


@pytest.mark.parametrize("presented", [None, "", "   ", "\t\n"])
def test_missing_or_blank_tokens_are_unauthenticated(
    tokens: ManagementTokens, presented: str | None
) -> None:
    with pytest.raises(Unauthenticated, match="no token presented"):
        tokens.verify(presented)


def test_blank_token_never_matches_even_if_configured() -> None:
    with pytest.raises(ValueError):
        ManagementTokens({"": ADMIN})
    with pytest.raises(ValueError):
        ManagementTokens({"  ": "acme"})


def test_verify_compares_against_every_token(
    tokens: ManagementTokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No early exit: the number of comparisons does not depend on which token matched."""
    import runtara_environment.management_tokens as module

    calls: list[int] = []
    real = module.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        assert len(a) == len(b) == 32  # digests: known token lengths are not exposed either
        return real(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", counting)
    counts = []
    for presented in (ADMIN_TOKEN, GLOBEX_TOKEN, "nope-nope-nope-nope"):
        calls.clear()
        try:
            tokens.verify(presented)
        except Unauthenticated:
            pass
        counts.append(len(calls))
    assert counts == [3, 3, 3]


def test_repr_does_not_reveal_tokens(tokens: ManagementTokens) -> None:
    assert ACME_TOKEN not in repr(tokens) and len(tokens) == 3


# --- scoping ------------------------------------------------------------------------------------


def test_tenant_principal_acts_on_its_own_tenant_only() -> None:
    acme = Principal("acme")
    assert acme.scope(None) == "acme"
    assert acme.scope("acme") == "acme"
    with pytest.raises(Forbidden) as caught:
        acme.scope("globex")
    assert caught.value.code is ErrorCode.FORBIDDEN
    assert "globex" not in caught.value.message  # nothing about the other tenant


def test_refusal_is_the_same_for_existing_and_unknown_tenants() -> None:
    acme = Principal("acme")
    messages = set()
    for other in ("globex", "no-such-tenant"):
        with pytest.raises(Forbidden) as caught:
            acme.scope(other)
        messages.add(caught.value.message)
    assert len(messages) == 1


def test_admin_may_name_any_tenant_or_none_for_all() -> None:
    admin = Principal(None)
    assert admin.scope("acme") == "acme"
    assert admin.scope("globex") == "globex"
    assert admin.scope(None) is None


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 256, "é" * 128, ADMIN])
@pytest.mark.parametrize("principal", [Principal(None), Principal("acme")])
def test_impossible_tenant_names_are_bad_requests(principal: Principal, bad: str) -> None:
    with pytest.raises(BadRequest):
        principal.scope(bad)


def test_longest_valid_tenant_name_is_accepted() -> None:
    assert Principal(None).scope("x" * 255) == "x" * 255


def test_can_see_filters_rows() -> None:
    assert Principal(None).can_see("acme") and Principal(None).can_see("globex")
    assert Principal("acme").can_see("acme")
    assert not Principal("acme").can_see("globex")


def test_another_tenants_row_looks_missing() -> None:
    acme = Principal("acme")
    acme.require_visible("acme", "instance order-1")
    Principal(None).require_visible("globex", "instance order-1")
    with pytest.raises(NotFound) as other:
        acme.require_visible("globex", "instance order-1")
    with pytest.raises(NotFound) as missing:
        acme.require_visible(None, "instance order-1")
    assert other.value.message == missing.value.message == "instance order-1 not found"


# --- the development admin token ----------------------------------------------------------------


def test_dev_admin_token_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = load_tokens(tokens_file=None, data_dir=data_dir)
    path = admin_token_path(data_dir)
    assert path == data_dir / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 32
    assert first.verify(token).is_admin
    before = path.stat().st_mtime_ns
    again = load_tokens(tokens_file=None, data_dir=data_dir)
    assert path.read_text().strip() == token and path.stat().st_mtime_ns == before
    assert again.verify(token).is_admin
    assert [p.name for p in data_dir.iterdir()] == ["admin-token"]  # no temporary left


def test_concurrent_first_loads_agree_on_one_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    barrier = threading.Barrier(8)

    def load() -> ManagementTokens:
        barrier.wait()
        return load_tokens(tokens_file=None, data_dir=data_dir)

    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: load(), range(8)))
    token = admin_token_path(data_dir).read_text().strip()
    assert all(each.verify(token).is_admin for each in loaded)
    assert find_client_token(explicit=None, data_dir=data_dir) == token


def test_dev_admin_token_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = admin_token_path(tmp_path)
    path.write_text("z" * 43)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_tokens(tokens_file=None, data_dir=tmp_path)


def test_dev_message_points_at_the_admin_token(tmp_path: Path) -> None:
    tokens = load_tokens(tokens_file=None, data_dir=tmp_path)
    with pytest.raises(Unauthenticated, match="admin-token"):
        tokens.verify("wrong-token-0123456789")


# --- the tokens file ----------------------------------------------------------------------------


def test_tokens_file_is_used_instead_of_the_dev_token(tmp_path: Path) -> None:
    path = write_tokens_file(tmp_path / "tokens.json", {ADMIN_TOKEN: "*", ACME_TOKEN: "acme"})
    data_dir = tmp_path / "data"
    tokens = load_tokens(tokens_file=path, data_dir=data_dir)
    assert tokens.verify(ADMIN_TOKEN).is_admin
    assert tokens.verify(ACME_TOKEN) == Principal("acme")
    assert not admin_token_path(data_dir).exists()
    with pytest.raises(Unauthenticated, match="RUNTARA_TOKENS_FILE"):
        tokens.verify(GLOBEX_TOKEN)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('"just a string"', "expected a JSON object"),
        ("{}", "has no tokens"),
        ({ACME_TOKEN: 7}, "maps to a number"),
        ({ACME_TOKEN: None}, "maps to null"),
        ({ACME_TOKEN: ["acme"]}, "maps to an array"),
        ({ACME_TOKEN: True}, "maps to true/false"),
        ({"": "acme"}, "empty token"),
        ({"   ": "acme"}, "empty token"),
        ({"short-token": "acme"}, "shorter than 16"),
        ({" " + ACME_TOKEN: "acme"}, "whitespace"),
        ({ACME_TOKEN: ""}, "tenant name is empty"),
        ({ACME_TOKEN: "ac\x00me"}, "NUL"),
        ({ACME_TOKEN: "t" * 256}, "longer than 255 bytes"),
        (f'{{"{ACME_TOKEN}": "acme", "{ACME_TOKEN}": "globex"}}', "appears twice"),
    ],
)
def test_invalid_tokens_files_name_the_file_and_problem(
    tmp_path: Path, content: Any, problem: str
) -> None:
    path = write_tokens_file(tmp_path / "tokens.json", content)
    with pytest.raises(ConfigError) as caught:
        load_tokens(tokens_file=path, data_dir=tmp_path / "data")
    message = str(caught.value)
    assert str(path) in message and problem in message
    assert ACME_TOKEN not in message  # a bad file must not put its secrets in the logs


def test_non_utf8_tokens_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(b'{"\xff\xfe": "acme"}')
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="UTF-8"):
        load_tokens(tokens_file=path, data_dir=tmp_path)


def test_missing_tokens_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_tokens(tokens_file=path, data_dir=tmp_path)
    assert str(path) in str(caught.value)
    assert not admin_token_path(tmp_path).exists()  # no silent fallback to the dev token


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_tokens_file_accessible_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_tokens_file(tmp_path / "tokens.json", {ACME_TOKEN: "acme"}, mode=mode)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        load_tokens(tokens_file=path, data_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_tokens_file_with_mode_0400_is_accepted(tmp_path: Path) -> None:
    path = write_tokens_file(tmp_path / "tokens.json", {ACME_TOKEN: "acme"}, mode=0o400)
    assert load_tokens(tokens_file=path, data_dir=tmp_path).verify(ACME_TOKEN).tenant == "acme"


# --- what runtara-ctl sends ---------------------------------------------------------------------


def test_client_prefers_explicit_token(tmp_path: Path) -> None:
    load_tokens(tokens_file=None, data_dir=tmp_path)  # a dev token exists too
    assert find_client_token(explicit=ACME_TOKEN, data_dir=tmp_path) == ACME_TOKEN
    assert find_client_token(explicit=f" {ACME_TOKEN}\n", data_dir=tmp_path) == ACME_TOKEN


def test_client_falls_back_to_the_dev_admin_token(tmp_path: Path) -> None:
    tokens = load_tokens(tokens_file=None, data_dir=tmp_path)
    token = find_client_token(explicit=None, data_dir=tmp_path)
    assert tokens.verify(token).is_admin


def test_client_without_any_token_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RUNTARA_TOKEN") as caught:
        find_client_token(explicit=None, data_dir=tmp_path / "data")
    assert "RUNTARA_DATA_DIR" in str(caught.value)
    assert not admin_token_path(tmp_path / "data").exists()  # the client never creates one


def test_client_refuses_an_empty_explicit_token(tmp_path: Path) -> None:
    load_tokens(tokens_file=None, data_dir=tmp_path)  # must not silently become admin
    with pytest.raises(ConfigError, match="RUNTARA_TOKEN is set but empty"):
        find_client_token(explicit="  ", data_dir=tmp_path)


def test_client_refuses_a_dev_token_readable_by_others(tmp_path: Path) -> None:
    load_tokens(tokens_file=None, data_dir=tmp_path)
    os.chmod(admin_token_path(tmp_path), 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        find_client_token(explicit=None, data_dir=tmp_path)
