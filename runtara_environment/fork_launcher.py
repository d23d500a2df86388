"""The environment's handle on its pre-forked launcher (``launcher_process``).

``ForkLauncher.fork`` sends one ``ForkRequest`` over a private socket pair and returns the pid
of the instance process, which is already a child of the environment: the environment makes
itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), and the launcher forks twice, so the
instance process is re-parented here the moment the middle child exits. Exit detection (pidfd),
reaping with resource usage (``wait4``) and adoption after a restart then work exactly as for a
cold spawn.

The launcher is restarted when it dies, with backoff if it keeps dying; while it is down (and
before its first ``Ready``) ``available`` is False and the caller launches cold. A request in
flight when it dies fails with ``LauncherUnavailable``: the fork may or may not have happened, so
the caller must not simply launch the same attempt again.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

from runtara_core.errors import RuntaraError
from runtara_core.wire.frame_codec import FrameDecoder, encode_frame, unpack_payload
from runtara_environment.fork_messages import (
    MAX_FORK_MESSAGE_BYTES,
    ForkFailed,
    Forked,
    ForkRequest,
    Ready,
    parse_launcher_message,
)

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "runtara_environment.launcher_process"
"""Run as ``python -m``; also what ps shows for every instance forked from it."""
PR_SET_CHILD_SUBREAPER = 36
READY_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 10.0
"""A fork takes milliseconds: a launcher that does not answer within this is stuck, and is
replaced rather than left to hold up every launch behind it."""
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
"""A launcher that lived this long resets the restart backoff."""


class LauncherUnavailable(OSError):
    """The launcher is down (``in_flight`` False: launch cold instead), or went away with the
    request in flight (True: the fork may have happened, so the launch counts as failed)."""

    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        self.in_flight = in_flight


def become_subreaper() -> None:
    """Orphaned descendants (our instance processes, forked by the launcher) become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(errno)}")


def kill_group(pid: int) -> None:
    """SIGKILL a forked instance's process group (it leads one before its pid is answered)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ForkLauncher:
    def __init__(self, launcher_env: Mapping[str, str]) -> None:
        self._launcher_env = dict(launcher_env)
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._decoder = FrameDecoder(MAX_FORK_MESSAGE_BYTES)
        self._waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        self._ready = asyncio.Event()
        self._started_at = 0.0
        self._stopping = False
        self._backoff_s = RESTART_BACKOFF_INITIAL_S
        self._restart: asyncio.TimerHandle | None = None
        self._ready_timer: asyncio.TimerHandle | None = None
        self._send_lock = asyncio.Lock()
        self.unclaimed: set[int] = set()
        """Pids forked and answered but not yet handed to a caller: not orphans to reap."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Make this process a subreaper and start the launcher (``wait_ready`` to wait for it).

        Raises OSError when forking launches cannot work here (no subreaper support)."""
        become_subreaper()
        self._start_process()

    async def wait_ready(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    @property
    def available(self) -> bool:
        return self._ready.is_set() and self._channel is not None

    @property
    def forks_in_flight(self) -> int:
        """Requests not answered yet: their instance process may already be our child."""
        return len(self._waiting)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def stop(self) -> None:
        """Close the channel: the launcher exits on its own; SIGKILL if it lingers."""
        self._stopping = True
        for timer in (self._restart, self._ready_timer):
            if timer is not None:
                timer.cancel()
        self._close_channel("the environment is stopping")
        process = self._process
        self._process = None
        if process is not None:
            deadline = time.monotonic() + 2.0
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if process.poll() is None:
                process.kill()
                process.wait()

    def _start_process(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", LAUNCHER_MODULE, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=self._launcher_env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = ours
        self._decoder = FrameDecoder(MAX_FORK_MESSAGE_BYTES)
        self._started_at = time.monotonic()
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._on_readable)
        self._ready_timer = loop.call_later(READY_TIMEOUT_S, self._ready_overdue)

    def _ready_overdue(self) -> None:
        if not self._ready.is_set():
            log.error("the fork launcher was not ready within %gs: restarting it", READY_TIMEOUT_S)
            self._close_channel("it never became ready")

    # ------------------------------------------------------------------ forking

    async def fork(self, request: ForkRequest) -> int:
        """The pid of the new instance process (a child of ours); LauncherUnavailable or
        OSError if it could not be forked."""
        if not self.available:
            raise LauncherUnavailable("the fork launcher is not running")
        try:
            frame = encode_frame(request.to_message(), MAX_FORK_MESSAGE_BYTES)
        except RuntaraError as error:  # never sent: a cold spawn may take it
            raise LauncherUnavailable(f"the launch does not fit a fork request: {error}") from None
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        async with self._send_lock:  # answers come in request order: queue before sending
            channel = self._channel
            if channel is None:
                raise LauncherUnavailable("the fork launcher is not running")
            self._waiting.append(future)
            try:
                await asyncio.get_running_loop().sock_sendall(channel, frame)
            except OSError as error:
                self._close_channel(f"writing to it failed: {error}")
            except asyncio.CancelledError:  # part of a frame may be out: the stream is unusable
                self._close_channel("a request was cut off while being sent")
                raise
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                pid = await future
        except TimeoutError:
            why = f"it did not answer a fork request within {ANSWER_TIMEOUT_S:g}s"
            self._close_channel(why)
            raise LauncherUnavailable(f"the fork launcher is stuck ({why})", in_flight=True) from None
        self.unclaimed.discard(pid)
        return pid

    def _on_readable(self) -> None:
        channel = self._channel
        if channel is None:
            return
        try:
            data = channel.recv(64 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._close_channel(f"reading from it failed: {error}")
            return
        if not data:
            self._close_channel("it exited")
            return
        try:
            for payload in self._decoder.feed(data):
                self._on_message(parse_launcher_message(unpack_payload(payload)))
        except RuntaraError as error:
            self._close_channel(f"it sent something unreadable: {error}")

    def _on_message(self, message: Ready | Forked | ForkFailed) -> None:
        if isinstance(message, Ready):
            if self._ready_timer is not None:
                self._ready_timer.cancel()
            self._ready.set()
            log.info("fork launcher ready (pid %d, imports and warm-up took %d ms)", message.pid, message.ready_ms)
            return
        if not self._waiting:
            raise RuntaraError(f"an answer nobody asked for: {message}")
        future = self._waiting.popleft()
        if isinstance(message, Forked):
            if future.done():  # the caller went away: nobody would supervise it, so it must not run
                log.warning("killing instance process %d: its launch was abandoned", message.pid)
                kill_group(message.pid)
            else:
                self.unclaimed.add(message.pid)
                future.set_result(message.pid)
        elif not future.done():
            future.set_exception(OSError(message.error))

    # ------------------------------------------------------------------ the launcher dies

    def _close_channel(self, why: str) -> None:
        channel = self._channel
        if channel is None:
            return
        self._channel = None
        self._ready.clear()
        loop = asyncio.get_running_loop()
        loop.remove_reader(channel.fileno())
        channel.close()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(
                    LauncherUnavailable(f"the fork launcher went away mid-launch ({why})", in_flight=True)
                )
        if self._stopping:
            return
        process = self._process
        status = process.poll() if process is not None else None
        if process is not None and status is None:
            process.kill()
            status = process.wait()
        self._process = None
        lived_s = time.monotonic() - self._started_at
        if lived_s >= STABLE_AFTER_S:
            self._backoff_s = RESTART_BACKOFF_INITIAL_S
        log.warning(
            "the fork launcher stopped (%s, exit status %s); launches are cold spawns until it restarts in %.1fs",
            why,
            status,
            self._backoff_s,
        )
        self._restart = loop.call_later(self._backoff_s, self._restart_process)
        self._backoff_s = min(self._backoff_s * 2, RESTART_BACKOFF_MAX_S)

    def _restart_process(self) -> None:
        self._restart = None
        if self._stopping:
            return
        try:
            self._start_process()
        except OSError as error:
            log.error("could not restart the fork launcher: %s; retrying in %.1fs", error, self._backoff_s)
            self._restart = asyncio.get_running_loop().call_later(self._backoff_s, self._restart_process)
            self._backoff_s = min(self._backoff_s * 2, RESTART_BACKOFF_MAX_S)
