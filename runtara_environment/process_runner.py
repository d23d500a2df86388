"""Instance processes: launch one, see its exit the moment it happens, measure it.

Launching sits behind one interface (``ProcessLauncher.launch``) with two ways in: a fork from
the pre-forked launcher (``fork_launcher``, the default) or a cold spawn of
``python -m runtara_sdk`` (the setting ``RUNTARA_LAUNCHER=spawn``, and the fallback while the
launcher restarts). Both give the child the same clean process (DESIGN section 8): a clean
environment (its own variables and the start's env, never the server's database URL or
secrets), its own session and process group (stopping it stops whatever it started), its run
directory as cwd, its stdout/stderr appended to ``stdout.log`` / ``stderr.log`` there, and the
resource limits.

Either way the process is our child (a forked one is re-parented to us), so exits are seen
through a pidfd registered with the event loop, one file descriptor per live process and no
polling, and ``wait4`` reaps it with its resource usage (peak RSS, CPU time). A process adopted
after an environment restart is not our child, so it cannot be reaped or its exit status known;
its pidfd still says when it ends, and its metrics are the last ones sampled from /proc.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from runtara_core.persistence.rows import ProcessExit
from runtara_core.wire.management_messages import INSTANCE_ID_PATTERN
from runtara_environment.fork_launcher import LAUNCHER_MODULE, ForkLauncher, LauncherUnavailable
from runtara_environment.fork_messages import ForkRequest

log = logging.getLogger(__name__)

PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT", "TMPDIR")
"""Host variables a Python process needs to behave normally; nothing else of ours leaks in."""


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    memory_bytes: int | None = None
    cpu_time_s: int | None = None


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything one launch of one instance needs."""

    instance_id: str
    attempt: int
    launch_id: str
    token: str
    server_addr: str
    tls_ca: Path | None
    tls_insecure: bool
    image_path: Path
    image_entrypoint: str | None
    run_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    heartbeat_interval_s: float | None = None
    limits: ResourceLimits = ResourceLimits()


def child_environment(spec: LaunchSpec, host_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a launch: a few host basics, the start's env, ours on top."""
    env = {name: host_env[name] for name in PASSED_THROUGH if name in host_env}
    env.update(spec.env)
    env.update(
        {
            "RUNTARA_INSTANCE_ID": spec.instance_id,
            "RUNTARA_INSTANCE_TOKEN": spec.token,
            "RUNTARA_ATTEMPT": str(spec.attempt),
            "RUNTARA_LAUNCH_ID": spec.launch_id,
            "RUNTARA_SERVER_ADDR": spec.server_addr,
            "RUNTARA_RUN_DIR": str(spec.run_dir),
            "RUNTARA_IMAGE_PATH": str(spec.image_path),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if spec.tls_insecure:
        env["RUNTARA_TLS_INSECURE"] = "true"
    elif spec.tls_ca is not None:
        env["RUNTARA_TLS_CA"] = str(spec.tls_ca)
    if spec.image_entrypoint:
        env["RUNTARA_IMAGE_ENTRYPOINT"] = spec.image_entrypoint
    if spec.heartbeat_interval_s is not None:
        env["RUNTARA_HEARTBEAT_INTERVAL_S"] = f"{spec.heartbeat_interval_s:g}"
    return env


def launcher_environment(host_env: Mapping[str, str]) -> dict[str, str]:
    """The fork launcher's own environment: the host basics only. A forked child's
    /proc/<pid>/environ shows this block (its os.environ is the launch's own), so it holds
    nothing of the server's."""
    env = {name: host_env[name] for name in PASSED_THROUGH if name in host_env}
    env["PYTHONUNBUFFERED"] = "1"  # as in every cold launch: children inherit its stdio setup
    return env


def read_tail(path: Path, max_bytes: int) -> str | None:
    """The last ``max_bytes`` of a log, starting at a line boundary when it was cut."""
    if max_bytes <= 0:
        return None
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) == max_bytes and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    text = data.decode("utf-8", "replace").replace("\x00", "")
    return text or None


def _peak_rss_from_proc(pid: int) -> int | None:
    """VmHWM: the peak resident set of a live process (what rusage gives only to its parent)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class InstanceProcess:
    """One live launch. ``exited`` resolves with what it measured once the process is gone."""

    def __init__(
        self,
        instance_id: str,
        attempt: int,
        launch_id: str | None,
        pid: int,
        create_time: float,
        *,
        child: bool,
        popen: subprocess.Popen[bytes] | None = None,
        run_dir: Path,
        stderr_tail_bytes: int,
    ) -> None:
        self.instance_id = instance_id
        self.attempt = attempt
        self.launch_id = launch_id
        """Known for our own launches; for an adopted one, what its row said when adopted."""
        self.pid = pid
        self.create_time = create_time
        self.run_dir = run_dir
        # From the process's own start time, so an adopted launch's running time counts in full.
        self.started_monotonic = time.monotonic() - max(0.0, time.time() - create_time)
        self.exited: asyncio.Future[ProcessExit] = asyncio.get_running_loop().create_future()
        self._child = child
        self._popen = popen
        self._tail_bytes = stderr_tail_bytes
        self._peak_rss: int | None = None
        self._cpu_ms: int | None = None
        self._pidfd: int | None = None

    @property
    def adopted(self) -> bool:
        """Not our child: started by an earlier environment process."""
        return not self._child

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def watch(self) -> None:
        """Resolve ``exited`` when the process ends (at once if it already has)."""
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._reap()
            return
        loop.add_reader(self._pidfd, self._reap)

    def sample(self) -> None:
        """Remember current peak RSS and CPU time (the only metrics of an adopted process)."""
        if not self.alive:
            return
        rss = _peak_rss_from_proc(self.pid)
        if rss is not None:
            self._peak_rss = rss
        try:
            times = psutil.Process(self.pid).cpu_times()
            self._cpu_ms = int((times.user + times.system) * 1000)
        except psutil.Error:
            pass

    def signal_group(self, signum: int) -> bool:
        """Send ``signum`` to the launch's process group; False if it is already gone."""
        if not self.alive:
            return False
        try:
            os.killpg(self.pid, signum)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # the pid was reused by someone else's process: never touch it
            log.warning("not signalling pid %d: it is no longer our instance process", self.pid)
            return False

    def _reap(self) -> None:
        if self.exited.done():
            return
        exit_code: int | None = None
        exit_signal: int | None = None
        peak_rss, cpu_ms = self._peak_rss, self._cpu_ms
        if self._child:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status, usage = self.pid, 0, None
            if pid == 0:
                return  # spurious wake-up: still running
            if usage is not None:
                if os.WIFSIGNALED(status):
                    exit_signal = os.WTERMSIG(status)
                else:
                    exit_code = os.waitstatus_to_exitcode(status)
                peak_rss = usage.ru_maxrss * 1024
                cpu_ms = int((usage.ru_utime + usage.ru_stime) * 1000)
            if self._popen is not None:  # reaped here: Popen must not wait for it again
                self._popen.returncode = exit_code if exit_code is not None else -(exit_signal or 0)
        self._close_pidfd()
        run_ms = int((time.monotonic() - self.started_monotonic) * 1000)
        self.exited.set_result(
            ProcessExit(
                exit_code=exit_code,
                exit_signal=exit_signal,
                peak_rss_bytes=peak_rss,
                cpu_time_ms=cpu_ms,
                stderr_tail=read_tail(self.run_dir / "stderr.log", self._tail_bytes),
                run_time_ms=run_ms,
            )
        )

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Stop watching (environment shutdown); the process itself is left running."""
        self._close_pidfd()


def _apply_limits(pid: int, limits: ResourceLimits) -> None:
    """Set the child's limits from here (prlimit), right after the spawn: the interpreter is
    still starting, long before any image code runs, and the hard limit is set too so the
    image cannot raise it again."""
    if limits.memory_bytes is not None:
        resource.prlimit(pid, resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    if limits.cpu_time_s is not None:
        resource.prlimit(pid, resource.RLIMIT_CPU, (limits.cpu_time_s, limits.cpu_time_s))


HASHED_RUN_DIR_PREFIX = "_id-"
"""Run directories of ids that are not one safe path component are named by the id's hash."""


def run_dir_of(runs_dir: Path, instance_id: str) -> Path:
    """An instance's run directory: ``runs/<instance id>``. New ids are single safe path
    components (``INSTANCE_ID_PATTERN``); an id made before that rule (``a/b``, ``..``) gets
    ``runs/_id-<sha256>``, so no id can point a launch or a deletion outside ``runs/``."""
    if INSTANCE_ID_PATTERN.fullmatch(instance_id) and len(instance_id.encode()) <= 255:
        return runs_dir / instance_id
    return runs_dir / (HASHED_RUN_DIR_PREFIX + hashlib.sha256(instance_id.encode()).hexdigest()[:40])


def prepare_run_dir(spec: LaunchSpec, how: str) -> None:
    """The run directory, and a banner in stderr.log so each launch's output can be told apart."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with (spec.run_dir / "stderr.log").open("ab") as stderr:
        stderr.write(f"--- attempt {spec.attempt} launched at {stamp} ({how})\n".encode())


STARTUP_LOCALE_VARIABLES = frozenset({"LANG", "LC_ALL", "LC_CTYPE"})
"""What CPython reads once, at start-up, to choose its locale and text encodings."""


def needs_fresh_interpreter(spec: LaunchSpec) -> bool:
    """PYTHON* variables (PYTHONPATH, PYTHONHASHSEED, ...) and the locale variables act only
    when an interpreter starts: a launch that sets them gets one, so it behaves exactly as asked
    (a fork has the launcher's, which has only the host's)."""
    return any(name.startswith("PYTHON") or name in STARTUP_LOCALE_VARIABLES for name in spec.env)


def fork_request(spec: LaunchSpec, host_env: Mapping[str, str]) -> ForkRequest:
    return ForkRequest(
        env=child_environment(spec, host_env),
        cwd=str(spec.run_dir),
        stdout_path=str(spec.run_dir / "stdout.log"),
        stderr_path=str(spec.run_dir / "stderr.log"),
        memory_limit_bytes=spec.limits.memory_bytes,
        cpu_limit_s=spec.limits.cpu_time_s,
    )


def spawn(spec: LaunchSpec, *, stderr_tail_bytes: int) -> InstanceProcess:
    """Start a launch cold (a fresh interpreter); raises OSError if it cannot be started."""
    prepare_run_dir(spec, "cold spawn")
    with (spec.run_dir / "stderr.log").open("ab") as stderr, (spec.run_dir / "stdout.log").open("ab") as stdout:
        popen = subprocess.Popen(
            [sys.executable, "-m", "runtara_sdk"],
            env=child_environment(spec, os.environ),
            cwd=spec.run_dir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            close_fds=True,
        )
    try:
        _apply_limits(popen.pid, spec.limits)
        create_time = psutil.Process(popen.pid).create_time()
    except (OSError, psutil.Error) as error:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise OSError(f"could not set up the launch of {spec.instance_id}: {error}") from error
    process = InstanceProcess(
        spec.instance_id,
        spec.attempt,
        spec.launch_id,
        popen.pid,
        create_time,
        child=True,
        popen=popen,
        run_dir=spec.run_dir,
        stderr_tail_bytes=stderr_tail_bytes,
    )
    process.watch()
    return process


async def fork(spec: LaunchSpec, launcher: ForkLauncher, *, stderr_tail_bytes: int) -> InstanceProcess:
    """Start a launch as a fork of the pre-forked launcher. LauncherUnavailable if the launcher
    is down (launch cold instead); OSError if the fork failed or its outcome is unknown."""
    prepare_run_dir(spec, "fork")
    pid = await launcher.fork(fork_request(spec, os.environ))
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error as error:  # cannot happen to an unreaped child; never guess
        raise OSError(f"instance process {pid} of {spec.instance_id} vanished: {error}") from error
    process = InstanceProcess(
        spec.instance_id,
        spec.attempt,
        spec.launch_id,
        pid,
        create_time,
        child=True,
        run_dir=spec.run_dir,
        stderr_tail_bytes=stderr_tail_bytes,
    )
    process.watch()
    return process


class ProcessLauncher:
    """The one way the supervisor starts a launch: forked when the launcher is up, cold otherwise."""

    def __init__(self, *, stderr_tail_bytes: int, fork_launcher: ForkLauncher | None = None) -> None:
        self.fork_launcher = fork_launcher
        self._tail_bytes = stderr_tail_bytes

    async def launch(self, spec: LaunchSpec) -> InstanceProcess:
        launcher = self.fork_launcher
        if launcher is not None and launcher.available and not needs_fresh_interpreter(spec):
            try:
                return await fork(spec, launcher, stderr_tail_bytes=self._tail_bytes)
            except LauncherUnavailable as error:
                if error.in_flight:
                    # It may have forked: never launch the attempt again while that process may
                    # run. Kill it if it exists; the launch counts as failed (a crash: relaunched
                    # later as the next attempt, which fences any straggler out).
                    kill_lost_fork(spec.run_dir, keep=self.own_pids())
                    raise
        return spawn(spec, stderr_tail_bytes=self._tail_bytes)

    @property
    def forks_in_flight(self) -> int:
        return self.fork_launcher.forks_in_flight if self.fork_launcher is not None else 0

    def own_pids(self) -> set[int]:
        """Children that are not instance processes to reap: the launcher, and pids in transit."""
        launcher = self.fork_launcher
        if launcher is None:
            return set()
        pids = set(launcher.unclaimed)
        if launcher.pid is not None:
            pids.add(launcher.pid)
        return pids

    async def stop(self) -> None:
        if self.fork_launcher is not None:
            await self.fork_launcher.stop()


def kill_lost_fork(run_dir: Path, keep: Collection[int]) -> None:
    """SIGKILL the instance process of a fork whose answer was lost (the launcher died with it
    in flight): our child, leading its own session, forked from the launcher, in its run
    directory or not yet moved there."""
    places = {str(run_dir), "/"}
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for child in children:
        try:
            if (
                child.pid not in keep
                and os.getsid(child.pid) == child.pid
                and child.cwd() in places
                and LAUNCHER_MODULE in " ".join(child.cmdline())
            ):
                log.warning("killing instance process %d: its fork was never confirmed", child.pid)
                os.killpg(child.pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            continue


def reap_orphans(keep: Collection[int], *, forks_in_flight: bool = False) -> int:
    """Reap exited children we never started: as a subreaper we inherit an instance's own
    orphaned children, and nobody else will collect them. Returns how many were reaped.

    While a fork is in flight, an exited session leader may be the instance process whose pid
    is about to be answered (its exit status is its supervisor's): it is left for later."""
    reaped = 0
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return 0
    for child in children:
        if child.pid in keep:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            if forks_in_flight and os.getsid(child.pid) == child.pid:
                continue
            if os.waitpid(child.pid, os.WNOHANG)[0] == child.pid:
                reaped += 1
        except (psutil.Error, OSError):
            continue
    return reaped


def adopt(
    instance_id: str,
    attempt: int,
    launch_id: str | None,
    pid: int,
    create_time: float,
    *,
    run_dir: Path,
    stderr_tail_bytes: int,
) -> InstanceProcess | None:
    """The still-running launch an earlier environment process started, if ``pid`` is it.

    The pid must exist with exactly the recorded start time: a pid reused by another process
    is never adopted (nor signalled).
    """
    try:
        actual = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    if abs(actual - create_time) > 0.01:
        return None
    process = InstanceProcess(
        instance_id,
        attempt,
        launch_id,
        pid,
        create_time,
        child=False,
        run_dir=run_dir,
        stderr_tail_bytes=stderr_tail_bytes,
    )
    process.sample()
    process.watch()
    return process
