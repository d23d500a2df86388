"""Cross-process signal news on PostgreSQL: NOTIFY inside the writing transaction, LISTEN here.

A signal written by any process (another environment node, an operator tool) reaches the core
that holds the instance's connection, delivered by PostgreSQL on commit. Payloads are small
JSON (instance id, kind, name); the channel is per schema, since schemas keep deployments (and
tests) apart but notifications are database-wide.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from runtara_core.signal_notifier import SignalStored, Subscriber

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "runtara_signals"


MAX_IDENTIFIER = 63


def channel_name(schema: str | None) -> str:
    """The channel of one schema; a long schema name is hashed rather than cut, so two schemas
    sharing a prefix never share a channel."""
    if schema is None:
        return CHANNEL_PREFIX
    name = f"{CHANNEL_PREFIX}_{schema}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    return f"{CHANNEL_PREFIX}_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"


def encode_notification(event: SignalStored) -> str:
    body: dict[str, Any] = {"i": event.instance_id, "k": event.kind}
    if event.name is not None:
        body["n"] = event.name
    if event.signal_id is not None:
        body["s"] = event.signal_id
    return json.dumps(body, separators=(",", ":"))


def decode_notification(payload: str) -> SignalStored | None:
    """None for anything that is not one of ours (anyone may NOTIFY on a channel)."""
    try:
        body = json.loads(payload)
        instance_id, kind, name, signal_id = body["i"], body["k"], body.get("n"), body.get("s")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(instance_id, str) or kind not in ("signal", "custom"):
        return None
    if name is not None and not isinstance(name, str):
        return None
    if signal_id is not None and (not isinstance(signal_id, int) or isinstance(signal_id, bool)):
        return None
    return SignalStored(instance_id, kind, name, signal_id)


class PostgresSignalListener:
    """One dedicated connection LISTENing on the channel, reconnected with backoff if it drops.

    Notifications sent while it is reconnecting are missed; push is best effort and the
    instance still sees every signal through checkpoint and poll.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        subscriber: Subscriber,
        *,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._subscriber = subscriber
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Listen now (raises if the database is unreachable), then keep listening."""
        await self._listen()
        self._task = asyncio.create_task(self._supervise(), name="pg-signal-listener")

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _c: self._lost.set())
            await conn.add_listener(self._channel, self._received)
        except BaseException:
            conn.terminate()  # cancelled (close() during a reconnect) or failed: do not leak it
            raise
        self._conn = conn
        log.debug("listening for signals on %s", self._channel)

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event = decode_notification(payload)
        if event is None:
            log.warning("ignored a malformed notification on %s", self._channel)
            return
        self._subscriber(event)

    async def _supervise(self) -> None:
        initial, maximum = self._backoff
        while not self._closed:
            await self._lost.wait()
            if self._closed:
                return
            log.warning("lost the signal LISTEN connection; reconnecting")
            delay = initial
            while not self._closed:
                try:
                    await self._listen()
                    log.info("signal LISTEN connection restored")
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.debug("signal LISTEN reconnect failed: %s", exc)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, maximum)

    async def close(self) -> None:
        self._closed = True
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
