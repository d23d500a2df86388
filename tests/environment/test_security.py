"""Security of the environment end to end (DESIGN sections 2, 4, 8, 9), against a real
environment process on loopback, on both backends: authentication before any op, tenant
isolation that reveals nothing, hostile image archives, and the clean environment of an
instance process."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtara_core.errors import (
    BadRequest,
    Forbidden,
    FrameTooLarge,
    NotFound,
    RuntaraError,
    Unauthenticated,
)
from runtara_core.protocol import MANAGEMENT_ALPN
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_environment.client import ManagementClient
from tests.environment.conftest import TEST_IMAGES, EnvironmentProcess, MakeEnvironment, wait_until
from tests.environment.test_image_archive import make_tgz, make_zip, tar_info

WAIT_S = 60.0
OPTIONS = ClientOptions(request_timeout_s=15, connect_timeout_s=10)

ADMIN = "admin-token-0123456789abcdef"
TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"
WAITER = (TEST_IMAGES / "waiter.py").read_bytes()


def write_tokens_file(directory: Path, tokens: dict[str, str]) -> Path:
    path = directory / "tokens.json"
    path.write_text(json.dumps(tokens))
    os.chmod(path, 0o600)
    return path


def tenant_tokens(directory: Path) -> Path:
    return write_tokens_file(directory, {ADMIN: "*", TOKEN_A: "a", TOKEN_B: "b"})


def client(environment: EnvironmentProcess, token: str) -> ManagementClient:
    return ManagementClient(
        "127.0.0.1", environment.mgmt_port, token=token, tls=ClientTls(environment.ca), options=OPTIONS
    )


async def raw_client(environment: EnvironmentProcess, *, alpn: str = MANAGEMENT_ALPN, port: int | None = None) -> RpcClient:
    """A connection that says nothing by itself (no hello): the bytes are up to the test."""
    rpc = RpcClient(
        "127.0.0.1", port or environment.mgmt_port, alpn=alpn, tls=ClientTls(environment.ca), options=OPTIONS
    )
    await rpc.connect()
    return rpc


def same_shape(message: str, asked: str, missing_message: str, missing: str) -> None:
    """A refusal for another tenant's row reads exactly like one for a row that does not exist."""
    assert message.replace(asked, "<ref>") == missing_message.replace(missing, "<ref>"), (message, missing_message)


# --------------------------------------------------------------------------- authentication


async def test_every_op_before_hello_is_unauthenticated(environment: EnvironmentProcess) -> None:
    rpc = await raw_client(environment)
    try:
        requests: list[dict[str, Any]] = [
            {"op": "health"},
            {"op": "list_images"},
            {"op": "list_instances"},
            {"op": "get_image", "image": "x"},
            {"op": "delete_image", "image": "x"},
            {"op": "start_instance", "image": "x"},
            {"op": "get_instance", "instance_id": "x"},
            {"op": "stop_instance", "instance_id": "x"},
            {"op": "resume_instance", "instance_id": "x"},
            {"op": "send_signal", "instance_id": "x", "signal": "cancel"},
            {"op": "send_custom_signal", "instance_id": "x", "name": "go"},
            {"op": "list_checkpoints", "instance_id": "x"},
            {"op": "get_checkpoint", "instance_id": "x", "checkpoint_id": "c"},
            {"op": "list_events", "instance_id": "x"},
            {
                "op": "register_image", "name": "evil", "filename": "evil.py", "size_bytes": 12,
                "sha256": hashlib.sha256(b"x = 1\n" * 2).hexdigest(), "data": b"x = 1\n" * 2,
            },
        ]
        for request in requests:
            with pytest.raises(Unauthenticated, match="hello") as caught:
                await rpc.call(request)
            assert "Traceback" not in caught.value.message
        with pytest.raises(Unauthenticated):
            async for _ in rpc.stream({"op": "watch", "instance_id": "x"}):
                pass
        # Nothing was stored by any of them.
        assert not (environment.data_dir / "images").exists() or not list((environment.data_dir / "images").iterdir())
        # The same connection works once it says hello.
        await rpc.call({"op": "hello", "token": environment.admin_token})
        assert "instances" in await rpc.call({"op": "health"})
    finally:
        await rpc.close()
    async with environment.client() as good:
        assert (await good.list_images()).total == 0


async def test_a_wrong_token_is_refused_without_echo(environment: EnvironmentProcess) -> None:
    wrong = "not-the-token-but-looks-secret-4242"
    with pytest.raises(Unauthenticated) as caught:
        async with client(environment, wrong):
            pass
    assert wrong not in caught.value.message and "4242" not in caught.value.message
    assert "token" in caught.value.message  # it says what to fix

    rpc = await raw_client(environment)
    try:
        for token in (wrong, " ", environment.admin_token + "x", environment.admin_token[:-1]):
            with pytest.raises(Unauthenticated) as caught:
                await rpc.call({"op": "hello", "token": token})
            if token.strip():
                assert token.strip() not in caught.value.message
            with pytest.raises(Unauthenticated):
                await rpc.call({"op": "health"})  # a refused hello authenticates nothing
        # The same connection, now with the right token.
        hello = await rpc.call({"op": "hello", "token": environment.admin_token})
        assert hello["admin"] is True
        assert "instances" in await rpc.call({"op": "health"})
    finally:
        await rpc.close()
    assert wrong not in environment.log()
    async with environment.client() as good:  # and a fresh connection works too
        assert good.identity is not None and good.identity.admin
        await good.health()


# --------------------------------------------------------------------------- tenants


async def test_tenants_see_only_their_own(make_environment: MakeEnvironment, tmp_path: Path) -> None:
    environment = await make_environment(tokens_file=tenant_tokens(tmp_path))
    async with client(environment, TOKEN_A) as a, client(environment, TOKEN_B) as b, client(environment, ADMIN) as admin:
        assert a.identity is not None and (a.identity.tenant, a.identity.admin) == ("a", False)
        assert b.identity is not None and (b.identity.tenant, b.identity.admin) == ("b", False)
        assert admin.identity is not None and admin.identity.admin

        image_a = await a.register_image(WAITER, name="secret-flow", filename="waiter.py")
        assert image_a.tenant == "a"
        started = await a.start_instance("secret-flow", {}, instance_id="a-instance-1")
        iid = started.instance_id

        async def waiting() -> bool:  # the waiter hibernates on its signal
            return (await a.get_instance(iid)).status == "suspended"

        await wait_until(waiting, timeout_s=WAIT_S, what="tenant a's instance waiting")

        # Images of A, by id and by name, are missing for B, exactly like a missing one.
        with pytest.raises(NotFound) as missing:
            await b.get_image("img-does-not-exist")
        for ref in (image_a.image_id, "secret-flow"):
            for call in (b.get_image, b.delete_image, b.start_instance):
                with pytest.raises(NotFound) as caught:
                    await call(ref)
                same_shape(caught.value.message, ref, missing.value.message, "img-does-not-exist")
        # Instances of A are missing for B, exactly like a missing one.
        with pytest.raises(NotFound) as missing:
            await b.get_instance("no-such-instance")
        probes: list[Callable[[], Awaitable[Any]]] = [
            lambda: b.get_instance(iid),
            lambda: b.list_events(iid),
            lambda: b.list_checkpoints(iid),
            lambda: b.get_checkpoint(iid, "c-1"),
            lambda: b.stop_instance(iid, grace_s=0),
            lambda: b.send_signal(iid, "cancel"),
            lambda: b.send_signal(iid, "pause"),
            lambda: b.send_signal(iid, "resume"),
            lambda: b.send_custom_signal(iid, "go", {"from": "b"}),
            lambda: b.resume_instance(iid),
        ]
        for probe in probes:
            with pytest.raises(NotFound) as caught:
                await probe()
            same_shape(caught.value.message, iid, missing.value.message, "no-such-instance")
        with pytest.raises(NotFound) as caught:
            async for _ in b.watch(iid):
                pass
        same_shape(caught.value.message, iid, missing.value.message, "no-such-instance")
        # Starting B's own image under A's instance id neither reveals nor touches A's instance.
        await b.register_image(WAITER, name="b-flow", filename="waiter.py")
        with pytest.raises(NotFound) as caught:
            await b.start_instance("b-flow", {}, instance_id=iid)
        same_shape(caught.value.message, iid, missing.value.message, "no-such-instance")

        # Listings of B show nothing of A.
        images_b = await b.list_images()
        assert [i.name for i in images_b.items] == ["b-flow"] and images_b.total == 1
        assert (await b.list_images(name="secret-flow")).total == 0
        assert (await b.list_instances()).total == 0
        assert (await b.list_instances(image=image_a.image_id)).total == 0
        assert (await b.list_instances(image="secret-flow")).total == 0
        assert sum((await b.health()).instances.values()) == 0

        # Naming another tenant (existing or not) is FORBIDDEN, the same answer for both.
        forbidden: list[str] = []
        for tenant in ("a", "nobody"):
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda t=tenant: b.list_images(tenant=t),
                lambda t=tenant: b.list_instances(tenant=t),
                lambda t=tenant: b.get_image(image_a.image_id, tenant=t),
                lambda t=tenant: b.delete_image(image_a.image_id, tenant=t),
                lambda t=tenant: b.start_instance("secret-flow", {}, tenant=t),
                lambda t=tenant: b.register_image(WAITER, name="intruder", filename="waiter.py", tenant=t),
            ]
            for call in calls:
                with pytest.raises(Forbidden) as caught:
                    await call()
                forbidden.append(caught.value.message)
        assert len(set(forbidden)) == 1 and "a" not in forbidden[0].split()

        # A was left untouched by all of this.
        row = await a.get_instance(iid)
        assert (row.status, row.termination_reason, row.tenant) == ("suspended", "waiting", "a")
        assert [e.type for e in (await a.list_events(iid)).items].count("signal") == 0
        assert (await a.get_image(image_a.image_id)).name == "secret-flow"
        assert sum((await a.health()).instances.values()) == 1

        # The admin sees both tenants.
        assert {i.tenant for i in (await admin.list_images()).items} == {"a", "b"}
        assert [i.instance_id for i in (await admin.list_instances()).items] == [iid]
        assert (await admin.get_instance(iid)).tenant == "a"
        assert (await admin.list_images(tenant="a")).total == 1
        assert sum((await admin.health()).instances.values()) == 1
        await admin.stop_instance(iid, grace_s=1)


# --------------------------------------------------------------------------- hostile images

MAX_IMAGE = 200_000
FLOW = b"from runtara_sdk import workflow\n\n\n@workflow\nasync def main(ctx, input):\n    return input\n"


def images_dir(environment: EnvironmentProcess) -> Path:
    return environment.data_dir.resolve() / "images"


def stored_images(environment: EnvironmentProcess) -> list[str]:
    directory = images_dir(environment)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


async def test_hostile_archives_are_refused_and_leave_nothing(
    make_environment: MakeEnvironment, tmp_path: Path
) -> None:
    environment = await make_environment(max_image_bytes=MAX_IMAGE)
    outside = tmp_path / "outside-target"
    absolute = tmp_path / "absolute-evil.py"
    bomb = make_zip({"flow.py": FLOW, "zeros.bin": b"\0" * (40 * 1024 * 1024)})
    assert len(bomb) < MAX_IMAGE  # small compressed, huge uncompressed
    incompressible = make_zip({"flow.py": FLOW, "noise.bin": os.urandom(MAX_IMAGE + 10_000)})
    cases: list[tuple[str, bytes, str, type[RuntaraError], str]] = [
        ("zip-traversal", make_zip({"flow.py": FLOW, "../evil.py": b"x = 1\n"}), "i.zip", BadRequest, "escapes"),
        ("zip-deep-traversal", make_zip({"flow.py": FLOW, "a/../../../evil.py": b"x = 1\n"}), "i.zip", BadRequest, "escapes"),
        ("zip-absolute", make_zip({"flow.py": FLOW, str(absolute): b"x = 1\n"}), "i.zip", BadRequest, "absolute"),
        (
            "tar-symlink",
            make_tgz([(tar_info("flow.py"), FLOW), (tar_info("link", type_=tarfile.SYMTYPE, linkname=str(outside)), None)]),
            "i.tar.gz", BadRequest, "link",
        ),
        (
            "tar-symlink-relative",
            make_tgz([(tar_info("flow.py"), FLOW), (tar_info("up", type_=tarfile.SYMTYPE, linkname="../../../.."), None)]),
            "i.tar.gz", BadRequest, "link",
        ),
        (
            "tar-hardlink",
            make_tgz([(tar_info("flow.py"), FLOW), (tar_info("hard", type_=tarfile.LNKTYPE, linkname="/etc/passwd"), None)]),
            "i.tar.gz", BadRequest, "link",
        ),
        ("tar-traversal", make_tgz([(tar_info("flow.py"), FLOW), (tar_info("../evil.py"), b"x = 1\n")]), "i.tar.gz", BadRequest, "escapes"),
        ("zip-bomb", bomb, "i.zip", BadRequest, "unpacks to more than.*RUNTARA_MAX_IMAGE_BYTES"),
        ("oversize-archive", incompressible, "i.zip", FrameTooLarge, "RUNTARA_MAX_IMAGE_BYTES"),
        ("oversize-py", b"x = 1\n" + b"#" * (MAX_IMAGE + 1) + b"\n", "big.py", FrameTooLarge, "RUNTARA_MAX_IMAGE_BYTES"),
        ("no-entrypoint", make_zip({"flow.py": FLOW}), "i.zip", BadRequest, "entrypoint"),
        ("entrypoint-missing-module", make_zip({"flow.py": FLOW}), "i.zip", BadRequest, "no module"),
        ("not-an-image", b"\x7fELF\x02\x01\x01" + os.urandom(100), "i.bin", BadRequest, "neither"),
        ("corrupt-zip", b"PK\x03\x04" + os.urandom(500), "i.zip", BadRequest, "archive"),
        ("corrupt-gzip", b"\x1f\x8b" + os.urandom(500), "i.tar.gz", BadRequest, "gzip|archive"),
        ("py-syntax-error", b"def main(:\n", "flow.py", BadRequest, "syntax"),
        ("py-bad-name", FLOW, "my-flow.py", BadRequest, "not a Python module name"),
    ]
    async with environment.client() as good:
        for label, data, filename, error, match in cases:
            entrypoint = None
            if filename.endswith((".zip", ".tar.gz")) and label != "no-entrypoint":
                entrypoint = "nomodule:main" if label == "entrypoint-missing-module" else "flow:main"
            with pytest.raises(error, match=match) as caught:
                await good.register_image(data, name=label, filename=filename, entrypoint=entrypoint)
            assert "Traceback" not in caught.value.message, label
            assert stored_images(environment) == [], f"{label} left {stored_images(environment)}"
            assert (await good.list_images()).total == 0, label
            await good.health()  # the server keeps serving
        # Nothing was written outside the images directory.
        assert not outside.exists() and not absolute.exists()
        assert not (environment.data_dir / "evil.py").exists() and not (environment.workdir / "evil.py").exists()
        assert not (tmp_path / "evil.py").exists()
        assert not [p for p in all_files(tmp_path) if p.name in ("evil.py", "absolute-evil.py")]
        # A valid image registers afterwards, as an archive and as a file.
        ok = await good.register_image(make_zip({"flow.py": FLOW}), name="fine", filename="fine.zip", entrypoint="flow:main")
        single = await good.register_image(FLOW, name="fine-file", filename="flow.py")
        assert stored_images(environment) == sorted([ok.image_id, single.image_id])
        assert (await good.list_images()).total == 2
        started = await good.start_instance("fine", {"x": 1})
        done = await good.wait(started.instance_id, timeout_s=WAIT_S)
        assert done.status == "completed" and done.output == {"x": 1}
    assert environment.alive
    assert "Traceback" not in environment.log()


async def test_declared_size_and_digest_must_match(environment: EnvironmentProcess) -> None:
    rpc = await raw_client(environment)
    try:
        await rpc.call({"op": "hello", "token": environment.admin_token})
        digest = hashlib.sha256(FLOW).hexdigest()

        def request(**fields: Any) -> dict[str, Any]:
            base = {"op": "register_image", "name": "flow", "filename": "flow.py",
                    "size_bytes": len(FLOW), "sha256": digest, "data": FLOW}
            base.update(fields)
            return base

        cases: list[tuple[dict[str, Any], str]] = [
            (request(sha256="0" * 64), "sha256 mismatch"),
            (request(sha256=hashlib.sha256(b"other").hexdigest()), "sha256 mismatch"),
            (request(size_bytes=len(FLOW) + 1), "size mismatch|size_bytes says"),
            (request(size_bytes=len(FLOW) - 1), "size mismatch|size_bytes says"),
            (request(data=FLOW + b"\n# tampered\n"), "mismatch|size_bytes says"),
        ]
        for body, match in cases:
            with pytest.raises(BadRequest, match=match):
                await rpc.call(body)
        # Streamed after the frame: more bytes than announced, fewer, and a wrong digest.
        streamed = request(data=None)
        with pytest.raises(BadRequest, match="more than"):
            await rpc.upload(streamed, FLOW + b"# extra bytes\n" * 10)
        with pytest.raises(BadRequest, match="size mismatch"):
            await rpc.upload(streamed, FLOW[:-5])
        with pytest.raises(BadRequest, match="sha256 mismatch"):
            await rpc.upload(request(data=None, sha256="f" * 64), FLOW)
        with pytest.raises(BadRequest, match="bare file name"):
            await rpc.call(request(filename="../flow.py"))
        with pytest.raises(BadRequest, match="not both"):
            await rpc.upload(request(), FLOW)
        with pytest.raises(FrameTooLarge, match="RUNTARA_MAX_IMAGE_BYTES"):
            await rpc.upload(request(data=None, size_bytes=2**40), FLOW)
        assert stored_images(environment) == []
        ok = await rpc.call(request())
        assert ok["name"] == "flow" and stored_images(environment) == [ok["image_id"]]
    finally:
        await rpc.close()


# --------------------------------------------------------------------------- instance environment


async def test_an_instance_sees_no_server_secret(make_environment: MakeEnvironment, tmp_path: Path) -> None:
    canary = "canary-in-the-environment-" + os.urandom(8).hex()
    token_canary = "canary-client-token-" + os.urandom(8).hex()
    instance_secret = "instance-secret-canary-" + os.urandom(8).hex()
    tokens_file = tenant_tokens(tmp_path)
    environment = await make_environment(
        tokens_file=tokens_file,
        token=token_canary,
        instance_secret=instance_secret,
        extra_env={"SECRET_CANARY": canary, "AWS_SECRET_ACCESS_KEY": canary, "PGPASSWORD": canary},
    )
    server_env = environment.env()
    assert server_env["RUNTARA_DATABASE_URL"] == environment.database_url  # what must not leak
    async with client(environment, ADMIN) as admin:
        await admin.register_image(TEST_IMAGES / "env_dump.py", name="env-dump")
        started = await admin.start_instance("env-dump", {}, env={"GREETING": "hi"})
        iid = started.instance_id
        done = await admin.wait(iid, timeout_s=WAIT_S)
        assert done.status == "completed", done
        output = done.output
        assert isinstance(output, dict)
        env: dict[str, str] = output["env"]

    for name in ("RUNTARA_DATABASE_URL", "RUNTARA_TOKENS_FILE", "RUNTARA_INSTANCE_SECRET", "RUNTARA_TOKEN",
                 "RUNTARA_DATA_DIR", "RUNTARA_DATABASE_SCHEMA", "SECRET_CANARY", "AWS_SECRET_ACCESS_KEY",
                 "PGPASSWORD"):
        assert name not in env, name
    secrets = [environment.database_url, str(tokens_file), instance_secret, canary, token_canary,
               ADMIN, TOKEN_A, TOKEN_B]
    if (environment.data_dir / "instance-secret").exists():
        secrets.append((environment.data_dir / "instance-secret").read_text().strip())
    for name, value in env.items():
        for secret in secrets:
            assert secret not in value and secret not in name, (name, "leaks a server secret")
    allowed = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONUNBUFFERED", "GREETING"}
    assert {k for k in env if not k.startswith("RUNTARA_")} <= allowed, sorted(env)
    assert {k for k in env if k.startswith("RUNTARA_")} <= {
        "RUNTARA_INSTANCE_ID", "RUNTARA_INSTANCE_TOKEN", "RUNTARA_ATTEMPT", "RUNTARA_SERVER_ADDR",
        "RUNTARA_RUN_DIR", "RUNTARA_IMAGE_PATH", "RUNTARA_IMAGE_ENTRYPOINT", "RUNTARA_TLS_CA",
        "RUNTARA_TLS_INSECURE", "RUNTARA_HEARTBEAT_INTERVAL_S", "RUNTARA_LAUNCH_ID",
    }, sorted(env)

    assert env["RUNTARA_INSTANCE_ID"] == iid
    assert env["RUNTARA_INSTANCE_TOKEN"] and env["RUNTARA_INSTANCE_TOKEN"] not in {ADMIN, TOKEN_A, TOKEN_B, token_canary}
    assert env["GREETING"] == "hi"
    assert env.get("RUNTARA_TLS_INSECURE") is None
    assert output["pgid"] == output["pid"] and output["sid"] == output["pid"]
    run_dir = (environment.data_dir / "runs" / iid).resolve()
    assert Path(output["cwd"]).resolve() == run_dir
    assert Path(env["RUNTARA_RUN_DIR"]).resolve() == run_dir
