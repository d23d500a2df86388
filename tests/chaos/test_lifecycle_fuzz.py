"""Issue 7, scenario 6 (fuzz): random lifecycles against a real core and management service.

A hypothesis ``RuleBasedStateMachine`` drives random sequences of management ops (start,
stop, resume, cancel / pause / resume signals, custom signals, reads) and instance ops over
QUIC (register with right and wrong tokens and attempts, checkpoints, sleeps, signal waits,
polls, acknowledgements, events) on a real ``CoreServer`` and a real ``ManagementService``
served on loopback, over a real SQLite file and a real PostgreSQL schema. Time is a FakeClock
the machine advances; the wake scheduler's claims run as rules. No instance process is ever
spawned (the supervisor is built but never started), so a step takes milliseconds. Race
rules fire a management op and an instance op (or two management ops, or a wake claim and a
signal) at the same time and accept any legal serialization of the two.

The machine keeps a model of every instance it made and predicts each answer: success or the
exact refusal code. After every step it checks the model against the database:
- every status change is a legal transition (``LEGAL``); terminal stays terminal, except
  failed -> pending through resume (DESIGN section 5);
- a saved checkpoint is never overwritten (save-if-absent: later saves return the first state);
- custom signals: each consumed at most once, FIFO per name, none lost (the consumed ones are
  exactly the model's, the queued ones exactly the rest);
- every refusal is a typed error with a stable code, never INTERNAL, never a transport failure;
- no instance hibernates waiting on a name while a signal of that name is queued (it would
  never wake), and of two concurrent resumes exactly one wins.

Bounded by default (about 20-30 s per backend on two cores); ``RUNTARA_FUZZ_EXAMPLES`` and
``RUNTARA_FUZZ_STEPS`` raise it for long runs, ``--hypothesis-seed`` replays a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure, FlakyStrategyDefinition
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runtara_core.errors import ErrorCode, RuntaraError
from runtara_core.instance_protocol.decisions import SleepRecord
from runtara_core.persistence import Persistence, open_persistence
from runtara_core.protocol import INSTANCE_ALPN, MANAGEMENT_ALPN
from runtara_core.server import CoreServer
from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.quic_server import RpcServer, ServerLimits
from runtara_core.transport.tls import ClientTls, resolve_server_tls
from runtara_core.wire.messages import (
    AckSignalRequest,
    CheckpointRequest,
    CheckpointResponse,
    Empty,
    EventRequest,
    GetCheckpointRequest,
    GetCheckpointResponse,
    PollSignalsRequest,
    PollSignalsResponse,
    RegisterRequest,
    RegisterResponse,
    SleepRequest,
    SleepResponse,
    WaitSignalRequest,
    WaitSignalResponse,
)
from runtara_environment.client import ManagementClient
from runtara_environment.image_registry import ImageRegistry
from runtara_environment.management_service import ManagementService
from runtara_environment.management_tokens import load_tokens
from runtara_environment.process_runner import ProcessLauncher
from runtara_environment.supervisor import CoreEndpoint, Supervisor
from tests.conftest import FakeClock, drop_schema, postgres_test_url
from tests.core.conftest import core_settings

pytestmark = [pytest.mark.chaos]

T = TypeVar("T")

EXAMPLES = int(os.environ.get("RUNTARA_FUZZ_EXAMPLES", "50"))
STEPS = int(os.environ.get("RUNTARA_FUZZ_STEPS", "60"))
HIBERNATE_AFTER_MS = 5_000
MAX_INSTANCES = 6
CALL_TIMEOUT_S = 30.0

STABLE_CODES = {code.value for code in ErrorCode} - {ErrorCode.INTERNAL.value}
TERMINAL = {"completed", "failed", "cancelled"}
LEGAL: dict[str, set[str]] = {
    "pending": {"running", "cancelled"},
    "running": {"completed", "failed", "cancelled", "suspended"},
    "suspended": {"pending", "cancelled"},
    "failed": {"pending"},  # resume
    "completed": set(),
    "cancelled": set(),
}
"""Every status change the protocol may make in one step (DESIGN section 5)."""
OUTCOME = {"cancel": ("cancelled", "cancelled"), "pause": ("suspended", "paused")}
"""What acknowledging an instance-wide signal does: (status, reason)."""
RANK = {"cancel": 2, "pause": 1, "resume": 1}

CHECKPOINT_IDS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
SIGNAL_NAMES = st.sampled_from(["s1", "s2"])
STATES = st.binary(max_size=8)
PICK = st.integers(min_value=0, max_value=1_000)


# --------------------------------------------------------------------------- the harness


class Harness:
    """A core, a management service and their database, on an event loop in a thread of its
    own, so that hypothesis (synchronous) can drive them step by step while QUIC keeps running."""

    def __init__(self, kind: str, url: str, schema: str | None, tmp: Path, certs: DevCertificates) -> None:
        self.kind, self.url, self.schema, self.tmp, self.certs = kind, url, schema, tmp, certs
        self.clock = FakeClock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"fuzz-{kind}", daemon=True)
        self.db: Persistence
        self.core: CoreServer
        self.rpc: RpcServer
        self.mgmt: ManagementClient
        self.unbound: RpcClient
        self.image_id = ""
        self.core_port = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(CALL_TIMEOUT_S)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        settings = core_settings(self.tmp, self.certs, hibernate_after_ms=HIBERNATE_AFTER_MS)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = await open_persistence(self.url, clock=self.clock, schema=self.schema)
        self.core = CoreServer(settings, self.db, clock=self.clock)
        _, self.core_port = await self.core.start()
        registry = ImageRegistry(
            self.db, settings.data_dir / "images", max_bytes=settings.max_image_bytes, max_files=settings.max_image_files
        )
        supervisor = Supervisor(  # built, never started: nothing is ever launched
            self.db,
            settings,
            tokens=self.core.tokens,
            registry=registry,
            core=CoreEndpoint(f"127.0.0.1:{self.core_port}", self.certs.ca_cert, False),
            node_id="fuzz-node",
            clock=self.clock,
            launcher=ProcessLauncher(stderr_tail_bytes=4096),
        )
        tokens = load_tokens(tokens_file=None, data_dir=settings.data_dir)
        service = ManagementService(
            self.db,
            settings,
            tokens=tokens,
            registry=registry,
            supervisor=supervisor,
            notifier=self.core.notifier,
            clock=self.clock,
        )
        self.rpc = RpcServer(
            alpn=MANAGEMENT_ALPN,
            routes=service.routes(),
            tls=resolve_server_tls(settings),
            limits=ServerLimits.from_settings(settings),
        )
        _, mgmt_port = await self.rpc.start("127.0.0.1", 0)
        token = (settings.data_dir / "admin-token").read_text().strip()
        self.mgmt = ManagementClient("127.0.0.1", mgmt_port, token=token, tls=ClientTls(self.certs.ca_cert))
        await self.mgmt.connect()
        image = await self.mgmt.register_image(
            b"async def main(ctx, x):\n    return x\n", name="fuzz", filename="fuzz.py"
        )
        self.image_id = image.image_id
        self.unbound = await self.instance_client()

    async def instance_client(self) -> RpcClient:
        client = RpcClient(
            "127.0.0.1",
            self.core_port,
            alpn=INSTANCE_ALPN,
            tls=ClientTls(self.certs.ca_cert),
            options=ClientOptions(request_timeout_s=CALL_TIMEOUT_S - 5, connect_timeout_s=5),
        )
        await client.connect()
        return client

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        await self.unbound.close()
        await self.mgmt.close()
        await self.rpc.stop(0.2)
        await self.core.stop(grace_s=0.2)
        await self.db.close()
        if self.schema is not None:
            await drop_schema(self.url, self.schema)


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path, dev_certs: DevCertificates) -> Iterator[Harness]:
    if request.param == "sqlite":
        h = Harness("sqlite", f"sqlite:///{tmp_path / 'fuzz.db'}", None, tmp_path, dev_certs)
    else:
        h = Harness("postgres", postgres_test_url(), f"rt_fuzz_{uuid.uuid4().hex[:12]}", tmp_path, dev_certs)
    h.start()
    try:
        yield h
    finally:
        h.stop()


# --------------------------------------------------------------------------- the model


@dataclass
class Conn:
    """One instance connection as the model sees it: the launch it registered for, and why
    that launch may write no more (the server's ``InstanceBinding.ended``)."""

    client: RpcClient
    attempt: int
    launch_id: str
    ended: str | None = None


@dataclass
class Inst:
    id: str
    status: str = "pending"
    reason: str | None = None
    attempt: int = 1
    launch_id: str | None = None
    slot: str | None = None
    wake_at: int | None = None
    waiting_name: str | None = None
    output: bytes | None = None
    error: str | None = None
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    """In save order; the first state saved under each id."""
    queues: dict[str, list[bytes]] = field(default_factory=dict)
    consumed: dict[str, list[tuple[bytes, str]]] = field(default_factory=dict)
    """Per name, in consumption order: (payload, checkpoint id it was saved as)."""
    conn: Conn | None = None
    stale: list[Conn] = field(default_factory=list)
    """Connections of earlier launches, kept open to try writes the fence must refuse."""

    def move(self, status: str, reason: str | None) -> None:
        self.status, self.reason = status, reason
        if status != "suspended":
            self.wake_at = None
            self.waiting_name = None

    def admits(self, conn: Conn) -> bool:
        """Whether a write over ``conn`` passes the binding check and the launch fence."""
        return conn.ended is None and self.status == "running" and self.attempt == conn.attempt


RACE_FAILURES: list[str] = []
"""What a race rule found wrong. A race's winner varies from run to run, so hypothesis cannot
replay the failing example and reports only that its data generation was flaky: the test
re-raises the original finding from here instead."""


@contextmanager
def record_race_failure(race: str) -> Iterator[None]:
    try:
        yield
    except AssertionError as error:
        RACE_FAILURES.append(f"race {race}: {error}")
        raise


def pending_type(message: Any) -> str | None:
    return None if message is None else message.signal_type


class LifecycleMachine(RuleBasedStateMachine):
    harness: Harness  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.h = type(self).harness
        self.prefix = f"f{uuid.uuid4().hex[:8]}"
        self.insts: list[Inst] = []
        self.seen: dict[str, str] = {}
        """Each instance's status as the database showed it after the previous step."""
        self.clients: list[RpcClient] = []
        self.sent = 0
        self.made = 0
        self.raced: list[str] = []
        """Instances a race left in a state only the database knows: checked, then dropped
        from the model, so that what hypothesis draws next never depends on a race's winner
        (it replays examples and requires them to draw the same way)."""

    # ------------------------------------------------------------------ helpers

    def call(self, coro: Coroutine[Any, Any, T]) -> tuple[T | None, RuntaraError | None]:
        """Run one request; a refusal must be a typed error with a stable code."""
        try:
            return self.h.run(coro), None
        except RuntaraError as error:
            assert error.code.value in STABLE_CODES, f"unstable code {error.code}: {error.message}"
            assert error.message.strip() and "Traceback" not in error.message, error.message
            return None, error

    def expect(self, error: RuntaraError | None, code: str | None, what: str) -> None:
        got = None if error is None else error.code.value
        assert got == code, f"{what}: expected {code or 'success'}, got {error!s}"

    def pick(self, n: int) -> Inst:
        return self.insts[n % len(self.insts)]

    def conn_of(self, inst: Inst, n: int) -> Conn | None:
        """The current connection most of the time, else one of an earlier launch."""
        choices = ([inst.conn] if inst.conn else []) + inst.stale
        return choices[n % len(choices)] if choices else None

    def token(self, instance_id: str, attempt: int) -> str:
        return self.h.core.tokens.mint(instance_id, attempt)

    def has_instances(self) -> bool:
        return bool(self.insts)

    def has_conn(self) -> bool:
        return any(i.conn or i.stale for i in self.insts)

    def new_client(self) -> RpcClient:
        client = self.h.run(self.h.instance_client())
        self.clients.append(client)
        return client

    def close_client(self, client: RpcClient) -> None:
        self.h.run(client.close())
        if client in self.clients:
            self.clients.remove(client)

    # ------------------------------------------------------------------ management

    @initialize()
    def first_instance(self) -> None:
        self._start()

    @precondition(lambda self: len(self.insts) < MAX_INSTANCES)
    @rule(launch=st.booleans())
    def start_instance(self, launch: bool) -> None:
        self._start()
        if launch:
            self.register(len(self.insts) - 1, "new_launch")

    @precondition(lambda self: any(i.status == "pending" for i in self.insts))
    @rule(n=PICK)
    def launch(self, n: int) -> None:
        """What the supervisor does with a pending instance: a new launch registers."""
        pending = [k for k, i in enumerate(self.insts) if i.status == "pending"]
        self.register(pending[n % len(pending)], "new_launch")

    @precondition(has_instances)
    @rule(op=st.sampled_from(["checkpoint", "poll", "event", "ack"]))
    def unbound(self, op: str) -> None:
        self.unbound_connection(op)

    def _start(self) -> None:
        self.made += 1
        instance_id = f"{self.prefix}-{self.made}"
        response, error = self.call(self.h.mgmt.start_instance(self.h.image_id, {"n": 1}, instance_id=instance_id))
        self.expect(error, None, "start_instance")
        assert response is not None and response.created and response.status == "pending"
        self.insts.append(Inst(instance_id))
        self.seen[instance_id] = "pending"

    @precondition(has_instances)
    @rule(
        n=PICK,
        op=st.sampled_from(
            ["cancel", "pause", "pause", "resume", "resume", "stop", "resume_instance", "resume_instance",
             "get", "start_again", "unknown"]
        ),
        unknown_op=st.sampled_from(["get", "stop", "resume", "cancel", "custom"]),
    )
    def manage(self, n: int, op: str, unknown_op: str) -> None:
        """One management op (grouped into one rule so that instance ops are drawn more often)."""
        if op in ("cancel", "pause", "resume"):
            self.send_signal(n, op)
        elif op == "stop":
            self.stop_instance(n)
        elif op == "resume_instance":
            self.resume_instance(n)
        elif op == "get":
            self.get_instance(n)
        elif op == "start_again":
            self.start_existing_id(n)
        else:
            self.management_unknown_instance(unknown_op)

    @precondition(lambda self: any(i.status in TERMINAL for i in self.insts))
    @rule(n=PICK, op=st.sampled_from(["resume_instance", "cancel", "pause", "resume", "stop", "custom", "register"]))
    def poke_terminal(self, n: int, op: str) -> None:
        """A finished instance stays finished: every way in is refused (a failed one resumes)."""
        done = [k for k, i in enumerate(self.insts) if i.status in TERMINAL]
        k = done[n % len(done)]
        if op == "resume_instance":
            self.resume_instance(k)
        elif op in ("cancel", "pause", "resume"):
            self.send_signal(k, op)
        elif op == "stop":
            self.stop_instance(k)
        elif op == "custom":
            self.send_custom_signal(k, "s1", None)
        else:
            self.register(k, "new_launch")

    @rule(ms=st.sampled_from([0, 1_000, 5_001, 30_000, 70_000]), claim=st.booleans())
    def time_passes(self, ms: int, claim: bool) -> None:
        """The fake clock moves; the wake scheduler's claims run (as its timer would)."""
        self.advance_clock(ms)
        if claim:
            self.claim_due_wakeups()
            self.claim_signal_waiters()

    def start_existing_id(self, n: int) -> None:
        """Starting an existing id returns it, never a duplicate, and changes nothing."""
        inst = self.pick(n)
        response, error = self.call(self.h.mgmt.start_instance(self.h.image_id, {"n": 2}, instance_id=inst.id))
        self.expect(error, None, "start_instance again")
        assert response is not None and not response.created and response.status == inst.status

    def send_signal(self, n: int, signal: str) -> None:
        inst = self.pick(n)
        response, error = self.call(self.h.mgmt.send_signal(inst.id, signal))
        if inst.status in TERMINAL:
            return self.expect(error, "INVALID_STATE", f"{signal} of a {inst.status} instance")
        if signal == "resume" and inst.status == "suspended":
            if inst.reason != "paused":
                return self.expect(error, "INVALID_STATE", f"resume signal of a {inst.reason} instance")
            inst.move("pending", None)
        elif signal == "cancel" and inst.status in ("pending", "suspended"):
            inst.move("cancelled", "cancelled")
        elif signal == "pause" and inst.reason == "paused":
            pass  # already paused: a no-op (see test_a_repeated_pause_does_not_undo_the_resume)
        else:
            self._offer(inst, signal)
        self.expect(error, None, f"{signal} signal")
        assert response is not None and response.status == inst.status

    def _offer(self, inst: Inst, signal: str) -> None:
        if inst.slot is None or (inst.slot != signal and RANK[signal] >= RANK[inst.slot]):
            inst.slot = signal

    def stop_instance(self, n: int) -> None:
        inst = self.pick(n)
        response, error = self.call(self.h.mgmt.stop_instance(inst.id, grace_s=0.1))
        self.expect(error, None, "stop_instance")
        if inst.status in ("pending", "suspended"):
            inst.move("cancelled", "stopped")
        elif inst.status == "running":
            self._offer(inst, "cancel")  # no process here: the instance is asked to cancel
        assert response is not None and response.status == inst.status

    def resume_instance(self, n: int) -> None:
        inst = self.pick(n)
        response, error = self.call(self.h.mgmt.resume_instance(inst.id))
        if inst.status == "suspended" and inst.reason == "paused":
            inst.move("pending", None)
        elif inst.status == "failed":
            inst.move("pending", None)
            inst.attempt += 1
            inst.error = inst.output = None
        else:
            return self.expect(error, "INVALID_STATE", f"resume of a {inst.status} instance")
        self.expect(error, None, "resume_instance")
        assert response is not None and response.status == "pending"

    @precondition(has_instances)
    @rule(
        n=PICK,
        name=SIGNAL_NAMES,
        payload=st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4)),
        burst=st.integers(1, 3),
    )
    def send_custom_signals(self, n: int, name: str, payload: Any, burst: int) -> None:
        """A burst, so that waits often find several queued: FIFO order shows only then."""
        for _ in range(burst):
            self.send_custom_signal(n, name, payload)

    def send_custom_signal(self, n: int, name: str, payload: Any) -> None:
        inst = self.pick(n)
        self.sent += 1
        payload = [self.sent, payload]  # unique, so an out-of-order delivery cannot hide
        response, error = self.call(self.h.mgmt.send_custom_signal(inst.id, name, payload))
        if inst.status in TERMINAL:
            return self.expect(error, "INVALID_STATE", f"custom signal to a {inst.status} instance")
        self.expect(error, None, "send_custom_signal")
        inst.queues.setdefault(name, []).append(json.dumps(payload).encode())
        if inst.status == "suspended" and inst.reason == "waiting" and inst.waiting_name == name:
            inst.move("pending", None)  # the signal wakes the instance hibernating on it
        assert response is not None and response.status == inst.status

    def get_instance(self, n: int) -> None:
        inst = self.pick(n)
        detail, error = self.call(self.h.mgmt.get_instance(inst.id))
        self.expect(error, None, "get_instance")
        assert detail is not None
        assert (detail.status, detail.termination_reason, detail.attempt) == (inst.status, inst.reason, inst.attempt)

    def management_unknown_instance(self, op: str) -> None:
        missing = f"{self.prefix}-missing"
        mgmt = self.h.mgmt
        coro = {
            "get": lambda: mgmt.get_instance(missing),
            "stop": lambda: mgmt.stop_instance(missing),
            "resume": lambda: mgmt.resume_instance(missing),
            "cancel": lambda: mgmt.send_signal(missing, "cancel"),
            "custom": lambda: mgmt.send_custom_signal(missing, "s1", 1),
        }[op]()
        _, error = self.call(coro)
        self.expect(error, "NOT_FOUND", f"{op} of an unknown instance")

    # ------------------------------------------------------------------ time and the wake scheduler

    def advance_clock(self, ms: int) -> None:
        self.h.clock.advance(ms)

    def claim_due_wakeups(self) -> None:
        now = self.h.clock()
        claimed, error = self.call(self.h.db.claim_due_wakeups(now, 1000))
        self.expect(error, None, "claim_due_wakeups")
        assert claimed is not None
        ids = {i.id for i in self.insts}
        mine = {row.instance_id for row in claimed if row.instance_id in ids}
        due = {
            i.id
            for i in self.insts
            if i.status == "suspended" and i.reason in ("sleeping", "waiting") and i.wake_at is not None and i.wake_at <= now
        }
        assert mine == due, f"claimed {sorted(mine)}, due {sorted(due)}"
        for inst in self.insts:
            if inst.id in due:
                inst.move("pending", None)

    def claim_signal_waiters(self) -> None:
        """Enqueueing already woke every waiter: the sweep finds none of ours."""
        claimed, error = self.call(self.h.db.claim_signal_waiters(None, 1000))
        self.expect(error, None, "claim_signal_waiters")
        assert claimed is not None
        assert not [r.instance_id for r in claimed if r.instance_id.startswith(self.prefix + "-")], (
            "an instance hibernated waiting on a signal that was already queued"
        )

    # ------------------------------------------------------------------ register

    @precondition(has_instances)
    @rule(n=PICK, how=st.sampled_from(["new_launch", "new_launch", "reconnect", "wrong_token", "wrong_attempt", "unknown"]))
    def register(self, n: int, how: str) -> None:

        inst = self.pick(n)
        if how == "reconnect" and inst.conn is None:
            how = "new_launch"
        instance_id, attempt = inst.id, inst.attempt
        launch_id = uuid.uuid4().hex if how != "reconnect" else inst.conn.launch_id  # type: ignore[union-attr]
        token = self.token(instance_id, attempt)
        if how == "wrong_token":
            token = self.token(f"{instance_id}x", attempt)
        elif how == "wrong_attempt":
            attempt = attempt + 1 if attempt == 1 or n % 2 else attempt - 1
            token = self.token(instance_id, attempt)
        elif how == "unknown":
            instance_id = f"{self.prefix}-unknown"
            token = self.token(instance_id, attempt)
        if how == "reconnect":
            attempt = inst.conn.attempt  # type: ignore[union-attr]
            token = self.token(instance_id, attempt)
            if attempt != inst.attempt:
                how = "wrong_attempt"
        client = self.new_client()
        request = RegisterRequest(instance_id=instance_id, token=token, attempt=attempt, launch_id=launch_id)
        response, error = self.call(client.request(request, RegisterResponse))
        expected: str | None
        if how == "wrong_token":
            expected = "UNAUTHENTICATED"
        elif how == "unknown":
            expected = "NOT_FOUND"
        elif how == "wrong_attempt":
            expected = "FORBIDDEN"
        elif inst.status == "pending":
            expected = None
        elif inst.status == "running":
            expected = None if inst.launch_id == launch_id else "FORBIDDEN"
        else:
            expected = "INVALID_STATE"
        self.expect(error, expected, f"register ({how}) of a {inst.status} instance")
        if error is not None:
            self.close_client(client)
            return
        assert response is not None
        if inst.status == "pending":
            inst.move("running", None)
            inst.launch_id = launch_id
        assert response.attempt == inst.attempt
        assert [c.checkpoint_id for c in response.checkpoints] == list(inst.checkpoints), "register history"
        for saved in response.checkpoints:
            assert saved.state is None or saved.state == inst.checkpoints[saved.checkpoint_id]
        assert pending_type(response.pending_signal) == inst.slot
        old = inst.conn
        inst.conn = Conn(client, attempt, launch_id)
        if old is not None:
            if how == "reconnect":
                self.close_client(old.client)  # a reconnect replaces its connection
            else:
                inst.stale.append(old)

    # ------------------------------------------------------------------ instance ops

    def _write_refusal(self, inst: Inst, conn: Conn) -> str | None:
        """The refusal a write over ``conn`` gets from the binding and the fence, if any."""
        return None if inst.admits(conn) else "INVALID_STATE"

    @precondition(has_conn)
    @rule(n=PICK, c=PICK, checkpoint_id=CHECKPOINT_IDS, state=STATES)
    def checkpoint(self, n: int, c: int, checkpoint_id: str, state: bytes) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        response, error = self.call(
            conn.client.request(CheckpointRequest(checkpoint_id=checkpoint_id, state=state), CheckpointResponse)
        )
        refusal = self._write_refusal(inst, conn)
        self.expect(error, refusal, f"checkpoint on a {inst.status} instance (conn ended: {conn.ended})")
        if refusal:
            return
        assert response is not None
        if checkpoint_id in inst.checkpoints:
            assert response.found and response.state == inst.checkpoints[checkpoint_id], "save-if-absent"
        else:
            assert not response.found
            inst.checkpoints[checkpoint_id] = state
        assert pending_type(response.pending_signal) == inst.slot

    def _with_conn(self, n: int, c: int) -> tuple[Inst, Conn | None]:
        with_conns = [i for i in self.insts if i.conn or i.stale]
        inst = with_conns[n % len(with_conns)]
        return inst, self.conn_of(inst, c)

    @precondition(has_conn)
    @rule(n=PICK, c=PICK, checkpoint_id=CHECKPOINT_IDS)
    def get_checkpoint(self, n: int, c: int, checkpoint_id: str) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        response, error = self.call(
            conn.client.request(GetCheckpointRequest(checkpoint_id=checkpoint_id), GetCheckpointResponse)
        )
        self.expect(error, None, "get_checkpoint")  # reads stay allowed after a launch ended
        assert response is not None
        assert response.found == (checkpoint_id in inst.checkpoints)
        if response.found:
            assert response.state == inst.checkpoints[checkpoint_id]

    @precondition(has_conn)
    @rule(n=PICK, c=PICK, checkpoint_id=CHECKPOINT_IDS, duration=st.sampled_from([0, 1_000, 4_000, 6_000, 60_000]), state=STATES)
    def sleep(self, n: int, c: int, checkpoint_id: str, duration: int, state: bytes) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        now = self.h.clock()
        response, error = self.call(
            conn.client.request(
                SleepRequest(checkpoint_id=checkpoint_id, duration_ms=duration, state=state), SleepResponse
            )
        )
        refusal = self._write_refusal(inst, conn)
        record = SleepRecord(now + duration, state)
        if not refusal and checkpoint_id in inst.checkpoints:
            stored = SleepRecord.decode(inst.checkpoints[checkpoint_id])
            if stored is None:
                refusal = "CONFLICT"  # the id holds some other checkpoint
            else:
                record = stored  # a replay: the first wake time stands
        self.expect(error, refusal, f"sleep on a {inst.status} instance (conn ended: {conn.ended})")
        if refusal:
            return
        assert response is not None and response.wake_at_ms == record.wake_at_ms
        inst.checkpoints.setdefault(checkpoint_id, record.encode())
        hibernate = record.wake_at_ms - now > HIBERNATE_AFTER_MS and inst.slot not in ("cancel", "pause")
        assert response.hibernate == hibernate, (response, inst.slot)
        assert pending_type(response.pending_signal) == inst.slot
        if hibernate:
            inst.move("suspended", "sleeping")
            inst.wake_at = record.wake_at_ms
            conn.ended = "hibernated (sleeping)"

    @precondition(has_conn)
    @rule(n=PICK, c=PICK, name=SIGNAL_NAMES, checkpoint_id=CHECKPOINT_IDS, timeout=st.sampled_from([None, 0, 1_000, 10_000]))
    def wait_signal(self, n: int, c: int, name: str, checkpoint_id: str, timeout: int | None) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        now = self.h.clock()
        response, error = self.call(
            conn.client.request(
                WaitSignalRequest(name=name, checkpoint_id=checkpoint_id, timeout_ms=timeout), WaitSignalResponse
            )
        )
        refusal = self._write_refusal(inst, conn)
        self.expect(error, refusal, f"wait_signal on a {inst.status} instance (conn ended: {conn.ended})")
        if refusal:
            return
        assert response is not None
        queue = inst.queues.setdefault(name, [])
        if checkpoint_id in inst.checkpoints:  # a replay: the checkpoint answers
            state = inst.checkpoints[checkpoint_id]
            if state == b"":
                assert (response.found, response.timed_out) == (False, True), response
            else:
                assert (response.found, response.payload) == (True, state), response
        elif queue:
            payload = queue.pop(0)
            assert (response.found, response.payload) == (True, payload), f"FIFO: {response} vs {payload!r}"
            inst.consumed.setdefault(name, []).append((payload, checkpoint_id))
            inst.checkpoints[checkpoint_id] = payload
        elif timeout is not None and timeout <= HIBERNATE_AFTER_MS:
            assert (response.found, response.hibernate) == (False, False), response
        else:
            hibernate = inst.slot not in ("cancel", "pause")
            assert (response.found, response.hibernate) == (False, hibernate), (response, inst.slot)
            assert pending_type(response.pending_signal) == inst.slot
            if hibernate:
                inst.move("suspended", "waiting")
                inst.wake_at = None if timeout is None else now + timeout
                inst.waiting_name = name
                conn.ended = "hibernated (waiting)"

    @precondition(has_conn)
    @rule(n=PICK, c=PICK)
    def poll_signals(self, n: int, c: int) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        response, error = self.call(conn.client.request(PollSignalsRequest(), PollSignalsResponse))
        self.expect(error, None, "poll_signals")
        assert response is not None and pending_type(response.pending_signal) == inst.slot

    @precondition(has_conn)
    @rule(n=PICK, c=PICK, signal=st.sampled_from(["cancel", "pause", "resume"]))
    def ack_signal(self, n: int, c: int, signal: str) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        _, error = self.call(conn.client.request(AckSignalRequest(signal_type=signal), Empty))
        outcome = OUTCOME.get(signal)
        ok = False
        if conn.ended is None:
            if inst.slot == signal:
                ok = inst.admits(conn)
                if ok:
                    inst.slot = None
                    if outcome is not None:
                        inst.move(*outcome)
                        conn.ended = outcome[1]
            elif outcome is not None and (inst.status, inst.reason) == outcome and inst.attempt == conn.attempt:
                ok = True  # it already shows the outcome: a retried acknowledgement
                conn.ended = outcome[1]
        else:
            ok = outcome is not None and conn.ended == outcome[1]
        self.expect(error, None if ok else "INVALID_STATE", f"ack {signal} (slot {inst.slot}, {inst.status}, ended {conn.ended})")

    @precondition(has_conn)
    @rule(n=PICK, c=PICK, kind=st.sampled_from(["completed", "failed", "custom", "heartbeat", "suspended"]), payload=STATES)
    def event(self, n: int, c: int, kind: str, payload: bytes) -> None:

        inst, conn = self._with_conn(n, c)
        if conn is None:
            return
        subtype = "fuzz" if kind == "custom" else None
        _, error = self.call(conn.client.request(EventRequest(type=kind, payload=payload, subtype=subtype), Empty))
        expected: str | None
        if kind in ("completed", "failed"):
            reason = "completed" if kind == "completed" else "application_error"
            error_text = payload.decode("utf-8", "replace").replace("\0", "") or "unknown error"
            same = (inst.output == payload) if kind == "completed" else (inst.error == error_text)
            if conn.ended == kind:
                expected = None  # the same report again on this connection
            elif inst.admits(conn):
                expected = None
                inst.move(kind, reason)
                if kind == "completed":
                    inst.output = payload
                else:
                    inst.error = error_text
                conn.ended = kind
            elif conn.ended is None and inst.status == kind and inst.attempt == conn.attempt and same:
                expected = None
                conn.ended = kind
            else:
                expected = "INVALID_STATE"
        elif kind == "custom":
            expected = self._write_refusal(inst, conn)
        elif kind == "heartbeat":
            expected = None if conn.ended is not None or inst.admits(conn) else "INVALID_STATE"
        else:
            exiting = conn.ended is not None and (conn.ended.startswith("hibernated") or conn.ended == "paused")
            expected = None if exiting else "INVALID_STATE"
        self.expect(error, expected, f"{kind} event on a {inst.status} instance (conn ended: {conn.ended})")

    def unbound_connection(self, op: str) -> None:
        """Every op but register needs a registered connection."""

        request = {
            "checkpoint": CheckpointRequest(checkpoint_id="a", state=b"x"),
            "poll": PollSignalsRequest(),
            "event": EventRequest(type="heartbeat"),
            "ack": AckSignalRequest(signal_type="cancel"),
        }[op]
        _, error = self.call(self.h.unbound.call(request))
        self.expect(error, "UNAUTHENTICATED", f"{op} on an unregistered connection")

    # ------------------------------------------------------------------ races

    def _active(self) -> list[Inst]:
        return [i for i in self.insts if i.conn is not None and i.admits(i.conn)]

    @precondition(lambda self: bool(self._active()))
    @rule(
        n=PICK,
        race=st.sampled_from(["custom_vs_wait", "cancel_vs_sleep", "pause_vs_wait", "stop_vs_complete", "cancel_vs_ack"]),
    )
    def race_on_running(self, n: int, race: str) -> None:
        """A management op and an instance op at once: each answers with success or a stable
        code, and the result is a legal serialization (checked by ``_resync``)."""
        with record_race_failure(race):
            self._race_on_running(n, race)

    def _race_on_running(self, n: int, race: str) -> None:

        active = self._active()
        inst = active[n % len(active)]
        conn = inst.conn
        assert conn is not None
        mgmt, client = self.h.mgmt, conn.client
        fresh = f"r{len(inst.checkpoints)}-{n}"  # a checkpoint id not used yet
        while fresh in inst.checkpoints:
            fresh += "x"
        sent: dict[str, list[bytes]] = {}
        if race == "custom_vs_wait":
            self.sent += 1
            sent["s1"] = [json.dumps([self.sent, "race"]).encode()]
            ops = (mgmt.send_custom_signal(inst.id, "s1", [self.sent, "race"]),
                   client.request(WaitSignalRequest(name="s1", checkpoint_id=fresh), WaitSignalResponse))
        elif race == "cancel_vs_sleep":
            ops = (mgmt.send_signal(inst.id, "cancel"),
                   client.request(SleepRequest(checkpoint_id=fresh, duration_ms=60_000), SleepResponse))
        elif race == "pause_vs_wait":
            ops = (mgmt.send_signal(inst.id, "pause"),
                   client.request(WaitSignalRequest(name="s2", checkpoint_id=fresh, timeout_ms=60_000), WaitSignalResponse))
        elif race == "stop_vs_complete":
            ops = (mgmt.stop_instance(inst.id, grace_s=0.1),
                   client.request(EventRequest(type="completed", payload=b"out"), Empty))
        else:
            ops = (mgmt.send_signal(inst.id, "cancel"),
                   client.request(AckSignalRequest(signal_type="cancel"), Empty))
        results = self.h.run(self._gather(*ops))
        for result in results:
            if isinstance(result, BaseException):
                assert isinstance(result, RuntaraError), f"{race}: {result!r}"
                assert result.code.value in STABLE_CODES, f"{race}: {result}"
        if isinstance(results[0], BaseException):
            sent.clear()  # the custom signal was refused: nothing was queued
        second = results[1]
        if not isinstance(second, BaseException):
            hibernated = getattr(second, "hibernate", False)
            if hibernated:
                conn.ended = "hibernated (waiting)" if "wait" in race else "hibernated (sleeping)"
            elif race == "stop_vs_complete":
                conn.ended = "completed"
                inst.output = b"out"
            elif race == "cancel_vs_ack":
                conn.ended = "cancelled"
        self.h.run(self._resync(inst, sent))
        self._retire(inst)

    @precondition(lambda self: any(i.status in ("suspended", "failed") for i in self.insts))
    @rule(n=PICK, race=st.sampled_from(["resume_vs_resume", "claim_vs_cancel", "claim_vs_custom", "resume_vs_cancel"]))
    def race_on_idle(self, n: int, race: str) -> None:
        """Two actors on an instance that has no launch: exactly one transition wins."""
        with record_race_failure(race):
            self._race_on_idle(n, race)

    def _race_on_idle(self, n: int, race: str) -> None:
        idle = [i for i in self.insts if i.status in ("suspended", "failed")]
        inst = idle[n % len(idle)]
        mgmt, db = self.h.mgmt, self.h.db
        if race in ("claim_vs_cancel", "claim_vs_custom"):
            self.h.clock.advance(70_000)  # whatever it sleeps on is due (a wait without timeout is not)
        sent: dict[str, list[bytes]] = {}
        if race == "resume_vs_resume":
            ops = (mgmt.resume_instance(inst.id), mgmt.resume_instance(inst.id))
        elif race == "claim_vs_cancel":
            ops = (db.claim_due_wakeups(self.h.clock(), 1000), mgmt.send_signal(inst.id, "cancel"))
        elif race == "claim_vs_custom":
            self.sent += 1
            name = inst.waiting_name or "s1"
            sent[name] = [json.dumps([self.sent]).encode()]
            ops = (db.claim_due_wakeups(self.h.clock(), 1000), mgmt.send_custom_signal(inst.id, name, [self.sent]))
        else:
            ops = (mgmt.resume_instance(inst.id), mgmt.send_signal(inst.id, "cancel"))
        before = (inst.status, inst.attempt)
        results = self.h.run(self._gather(*ops))
        for result in results:
            if isinstance(result, BaseException):
                assert isinstance(result, RuntaraError), f"{race}: {result!r}"
                assert result.code.value in STABLE_CODES, f"{race}: {result}"
        if race == "claim_vs_custom" and isinstance(results[1], BaseException):
            sent.clear()  # refused (a failed instance takes no signals): nothing was queued
        if race == "resume_vs_resume":
            wins = [r for r in results if not isinstance(r, BaseException)]
            resumable = before[0] == "failed" or inst.reason == "paused"
            assert len(wins) == (1 if resumable else 0), f"{race} on {before}: {results}"
        self.h.run(self._resync(inst, sent))
        if race == "resume_vs_resume" and before[0] == "failed":
            assert inst.attempt == before[1] + 1, "two resumes of a failed instance bumped the attempt twice"
        self._retire(inst)
        # The claim may have woken other due instances too (the same whichever won): take them
        # from the database.
        for other in self.insts:
            self.h.run(self._resync(other, {}))

    def _retire(self, inst: Inst) -> None:
        """Check what must hold after the race, then leave the instance out of the model."""
        self.seen[inst.id] = inst.status  # _resync checked the path (up to two transitions)
        self.h.run(self._check(inst))
        self.insts.remove(inst)
        self.raced.append(inst.id)

    @staticmethod
    async def _gather(*ops: Coroutine[Any, Any, Any]) -> list[Any]:
        return list(await asyncio.gather(*ops, return_exceptions=True))

    async def _resync(self, inst: Inst, sent: dict[str, list[bytes]]) -> None:
        """Take an instance from the database after a race, checking what must hold whatever
        the order was: a legal path of at most two transitions, saved checkpoints unchanged,
        every custom signal either still queued or consumed once, oldest first."""
        db = self.h.db
        row = await db.get_instance(inst.id)
        assert row is not None
        new = row.status.value
        if new != inst.status:
            assert new in LEGAL[inst.status] or any(new in LEGAL[mid] for mid in LEGAL[inst.status]), (
                f"{inst.id}: no legal path {inst.status} -> {new}"
            )
        inst.status = new
        inst.reason = row.termination_reason.value if row.termination_reason else None
        inst.attempt = row.attempt
        inst.wake_at, inst.waiting_name = row.wake_at_ms, row.waiting_signal_name
        inst.launch_id = row.launch_id
        if new == "pending" and inst.conn is not None and inst.conn.ended is None:
            inst.conn.ended = "hibernated (woken)"  # hibernated, and woken, within the race
        signal = await db.pending_signal(inst.id)
        inst.slot = signal.signal_type.value if signal else None
        page = await db.list_checkpoints(inst.id, limit=1000, with_state=True)
        stored = {c.checkpoint_id: c.state for c in page.items}
        assert list(stored)[: len(inst.checkpoints)] == list(inst.checkpoints), f"{inst.id}: checkpoint order"
        for checkpoint_id, state in inst.checkpoints.items():
            assert stored[checkpoint_id] == state, f"{inst.id}: checkpoint {checkpoint_id!r} overwritten in a race"
        inst.checkpoints = stored
        signals = await db.list_custom_signals(inst.id, include_consumed=True, limit=1000)
        for name in {s.name for s in signals} | set(inst.queues) | set(inst.consumed):
            mine = [s for s in signals if s.name == name]
            taken = [(s.payload, s.consumed_by_checkpoint_id or "") for s in mine if s.consumed_at_ms is not None]
            waiting = [s.payload for s in mine if s.consumed_at_ms is None]
            old_taken = inst.consumed.get(name, [])
            assert taken[: len(old_taken)] == old_taken, f"{inst.id}: {name!r} consumed history rewritten"
            newly = [payload for payload, _ in taken[len(old_taken) :]]
            assert newly + waiting == inst.queues.get(name, []) + sent.get(name, []), (
                f"{inst.id}: {name!r} lost, duplicated or reordered in a race"
            )
            inst.consumed[name], inst.queues[name] = taken, waiting

    # ------------------------------------------------------------------ invariants

    @invariant()
    def database_matches_model(self) -> None:
        for inst in self.insts:
            self.h.run(self._check(inst))

    async def _check(self, inst: Inst) -> None:
        db = self.h.db
        row = await db.get_instance(inst.id)
        assert row is not None, inst.id
        before, now = self.seen[inst.id], row.status.value
        if now != before:
            assert now in LEGAL[before], f"{inst.id}: illegal transition {before} -> {now}"
        self.seen[inst.id] = now
        reason = row.termination_reason.value if row.termination_reason else None
        assert (now, reason, row.attempt) == (inst.status, inst.reason, inst.attempt), (
            f"{inst.id}: database {now}/{reason}/attempt {row.attempt}, model {inst.status}/{inst.reason}/attempt {inst.attempt}"
        )
        if inst.status == "suspended":
            assert (row.wake_at_ms, row.waiting_signal_name) == (inst.wake_at, inst.waiting_name)
            assert not (inst.reason == "waiting" and inst.queues.get(inst.waiting_name or "")), (
                f"{inst.id}: hibernating on {inst.waiting_name!r} with such a signal queued: it never wakes"
            )
        signal = await db.pending_signal(inst.id)
        assert (signal.signal_type.value if signal else None) == inst.slot, f"{inst.id}: slot"
        page = await db.list_checkpoints(inst.id, limit=1000, with_state=True)
        stored = {c.checkpoint_id: c.state for c in page.items}
        assert list(stored) == list(inst.checkpoints), f"{inst.id}: checkpoint ids / order"
        for checkpoint_id, state in inst.checkpoints.items():
            assert stored[checkpoint_id] == state, f"{inst.id}: checkpoint {checkpoint_id!r} was overwritten"
        signals = await db.list_custom_signals(inst.id, include_consumed=True, limit=1000)
        for name in {s.name for s in signals} | set(inst.queues) | set(inst.consumed):
            mine = [s for s in signals if s.name == name]
            taken = [s for s in mine if s.consumed_at_ms is not None]
            waiting = [s for s in mine if s.consumed_at_ms is None]
            assert [(s.payload, s.consumed_by_checkpoint_id) for s in taken] == inst.consumed.get(name, []), (
                f"{inst.id}: signals {name!r} consumed out of order, twice or not at all"
            )
            assert [s.payload for s in waiting] == inst.queues.get(name, []), f"{inst.id}: a queued {name!r} was lost"
            assert mine[: len(taken)] == taken, f"{inst.id}: {name!r} not consumed oldest first"

    def teardown(self) -> None:
        for client in list(self.clients):
            self.close_client(client)


def test_random_lifecycles_keep_every_invariant(harness: Harness) -> None:
    LifecycleMachine.harness = harness
    RACE_FAILURES.clear()
    try:
        run_state_machine_as_test(
            LifecycleMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    except (FlakyStrategyDefinition, FlakyFailure) as flaky:
        if RACE_FAILURES:
            raise AssertionError(RACE_FAILURES[0]) from flaky
        raise



# --------------------------------------------------------------------------- regressions found by the fuzz


def test_a_repeated_pause_does_not_undo_the_resume(harness: Harness) -> None:
    """Found while modelling send_signal for the machine (a pause sent to an already paused
    instance, then a resume, then the relaunch registering): the second pause stayed in the
    signal slot, so the resumed
    launch was told to pause again at once and the resume was silently undone. A pause of a
    paused instance is now a no-op (management_service.send_signal)."""
    h = harness
    instance_id = f"regress-pause-{uuid.uuid4().hex[:8]}"
    h.run(h.mgmt.start_instance(h.image_id, {"n": 1}, instance_id=instance_id))

    def launch() -> tuple[RpcClient, RegisterResponse]:
        client = h.run(h.instance_client())
        token = h.core.tokens.mint(instance_id, 1)
        request = RegisterRequest(instance_id=instance_id, token=token, attempt=1, launch_id=uuid.uuid4().hex)
        return client, h.run(client.request(request, RegisterResponse))

    first, _ = launch()
    h.run(h.mgmt.send_signal(instance_id, "pause"))
    h.run(first.request(AckSignalRequest(signal_type="pause"), Empty))
    assert h.run(h.mgmt.get_instance(instance_id)).termination_reason == "paused"
    again = h.run(h.mgmt.send_signal(instance_id, "pause"))  # a retried pause: already paused
    assert (again.status, again.termination_reason) == ("suspended", "paused")
    assert h.run(h.mgmt.resume_instance(instance_id)).status == "pending"
    second, registered = launch()
    assert registered.pending_signal is None, "the resumed launch was told to pause again"
    for client in (first, second):
        h.run(client.close())
