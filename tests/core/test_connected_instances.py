"""The push registry on its own, with a scripted store and sessions (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from runtara_core.instance_protocol.signal_push import ConnectedInstances
from runtara_core.persistence.rows import SignalRow, SignalType
from runtara_core.signal_notifier import SignalStored


class FakeSession:
    def __init__(self) -> None:
        self.pushed: list[Any] = []
        self.closers: list[Any] = []

    def on_close(self, callback: Any) -> None:
        self.closers.append(callback)

    def push(self, message: Any) -> bool:
        self.pushed.append(message)
        return True

    def close(self) -> None:
        for callback in self.closers:
            callback(self)


async def test_a_signal_stored_while_the_last_read_finishes_is_still_pushed() -> None:
    loop = asyncio.get_running_loop()
    slot = {"row": SignalRow("i1", SignalType.PAUSE, b"", 1)}

    class Store:
        async def pending_signal(self, instance_id: str) -> SignalRow:
            row = slot["row"]
            if row.signal_type is SignalType.PAUSE:
                # A cancel lands just as this read completes: its notification runs after the
                # refresher's last step, before anything else of the refresher's.
                def cancel_stored() -> None:
                    slot["row"] = SignalRow("i1", SignalType.CANCEL, b"", 2)
                    connected.signal_stored(SignalStored("i1", "signal"))

                loop.call_soon(cancel_stored)
            return row

    connected = ConnectedInstances(Store())  # type: ignore[arg-type]
    session = FakeSession()
    connected.bind(session, "i1")  # type: ignore[arg-type]
    connected.signal_stored(SignalStored("i1", "signal"))
    async with asyncio.timeout(5):
        while len(session.pushed) < 2:
            await asyncio.sleep(0.01)
    assert [p.signal_type for p in session.pushed] == ["pause", "cancel"]
    assert not connected._dirty and not connected._refreshers


async def test_a_custom_signal_heard_twice_is_pushed_once() -> None:
    connected = ConnectedInstances(None)  # type: ignore[arg-type]
    session = FakeSession()
    connected.bind(session, "i1")  # type: ignore[arg-type]
    for _ in range(2):  # in-process, then through NOTIFY
        connected.signal_stored(SignalStored("i1", "custom", "approval", 7))
    connected.signal_stored(SignalStored("i1", "custom", "approval", 8))
    assert [(p.name) for p in session.pushed] == ["approval", "approval"]
    session.close()
    assert connected.connected_count == 0
    connected.signal_stored(SignalStored("i1", "custom", "approval", 9))
    assert len(session.pushed) == 2


async def test_the_notify_listener_never_leaks_a_connection_it_could_not_set_up() -> None:
    from runtara_core.persistence.signal_channel import PostgresSignalListener

    class Conn:
        terminated = False

        def add_termination_listener(self, _callback: Any) -> None:
            pass

        async def add_listener(self, _channel: str, _callback: Any) -> None:
            await asyncio.sleep(10)  # cancelled here, as by close() during a reconnect

        def terminate(self) -> None:
            self.terminated = True

    conn = Conn()

    async def connect() -> Conn:
        return conn

    listener = PostgresSignalListener(connect, "chan", lambda _e: None)  # type: ignore[arg-type]
    starting = asyncio.ensure_future(listener.start())
    await asyncio.sleep(0.05)
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    assert conn.terminated and not listener.listening
