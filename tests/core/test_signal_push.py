"""Signals pushed to connected instances: in-process through the notifier, and across processes
through PostgreSQL's NOTIFY."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import asyncpg
import pytest

from runtara_core.persistence import SignalType
from runtara_core.wire.messages import PollSignalsRequest, PollSignalsResponse
from tests.conftest import Backend
from tests.core.conftest import Core

PUSH_WAIT_S = 5.0
"""Only a bound against hanging; how fast pushes arrive is measured in bench/, not here."""


class Pushes:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def __call__(self, message: Any) -> None:
        self.queue.put_nowait(message)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.queue.get(), PUSH_WAIT_S)


async def test_a_stored_signal_is_pushed_to_the_connected_instance(core: Core) -> None:
    pushes = Pushes()
    client, row = await core.running_instance(on_push=pushes)
    await core.persistence.put_signal(row.instance_id, SignalType.CANCEL, b"operator")
    core.server.notifier.signal_stored(row.instance_id)
    assert await pushes.next() == {"push": "signal", "signal_type": "cancel", "payload": b"operator"}
    # Push only makes it faster: the request path still has it.
    polled = await client.request(PollSignalsRequest(), PollSignalsResponse)
    assert polled.pending_signal is not None and polled.pending_signal.signal_type == "cancel"


async def test_a_queued_custom_signal_is_announced_by_name(core: Core) -> None:
    pushes = Pushes()
    _, row = await core.running_instance(on_push=pushes)
    await core.persistence.enqueue_custom_signal(row.instance_id, "approval", b"yes")
    core.server.notifier.custom_signal_stored(row.instance_id, "approval")
    assert await pushes.next() == {"push": "custom_signal", "name": "approval"}


async def test_each_signal_is_pushed_once_and_only_to_its_instance(core: Core) -> None:
    mine, others = Pushes(), Pushes()
    _, row = await core.running_instance(on_push=mine)
    await core.running_instance(on_push=others)
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE)
    for _ in range(3):  # heard several times (in-process and NOTIFY): pushed once
        core.server.notifier.signal_stored(row.instance_id)
    assert (await mine.next())["signal_type"] == "pause"
    await core.persistence.put_signal(row.instance_id, SignalType.CANCEL)  # outranks the pause
    core.server.notifier.signal_stored(row.instance_id)
    assert (await mine.next())["signal_type"] == "cancel"
    await asyncio.sleep(0.3)
    assert mine.queue.empty() and others.queue.empty()


async def test_signals_for_instances_not_connected_here_are_ignored(core: Core) -> None:
    pushes = Pushes()
    client, row = await core.running_instance(on_push=pushes)
    await client.close()
    core.server.notifier.signal_stored(row.instance_id)
    core.server.notifier.signal_stored("not-connected-anywhere")
    core.server.notifier.custom_signal_stored("not-connected-anywhere", "x")
    await asyncio.sleep(0.2)
    assert pushes.queue.empty()
    assert core.server.connected_instances == 0


def put_signal_in_another_process(backend: Backend, instance_id: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from runtara_core.persistence import open_persistence, SignalType

        async def main():
            store = await open_persistence({backend.url!r}, schema={backend.schema!r})
            await store.put_signal({instance_id!r}, SignalType.CANCEL, b"from afar")
            await store.enqueue_custom_signal({instance_id!r}, "approval", b"ok")
            await store.close()

        asyncio.run(main())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_signal_written_by_another_process_is_pushed_via_notify(core: Core, backend: Backend) -> None:
    pushes = Pushes()
    _, row = await core.running_instance(on_push=pushes)
    await asyncio.to_thread(put_signal_in_another_process, backend, row.instance_id)
    assert await pushes.next() == {"push": "signal", "signal_type": "cancel", "payload": b"from afar"}
    assert await pushes.next() == {"push": "custom_signal", "name": "approval"}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_the_notify_listener_reconnects_after_losing_its_connection(core: Core, backend: Backend) -> None:
    pushes = Pushes()
    _, row = await core.running_instance(on_push=pushes)
    listener = core.server._listener
    assert listener is not None and listener.listening
    pid = listener._conn.get_server_pid()
    admin = await asyncpg.connect(backend.url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    async with asyncio.timeout(10):
        while not listener.listening or listener._conn.get_server_pid() == pid:
            await asyncio.sleep(0.05)
    await asyncio.to_thread(put_signal_in_another_process, backend, row.instance_id)
    assert (await pushes.next())["signal_type"] == "cancel"
