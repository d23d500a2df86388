"""The clean instance process (DESIGN section 8), whichever way it was launched: a fork of the
pre-forked launcher (sqlite, postgres) or a cold spawn (sqlite-spawn) give the same process.
And the launcher itself: its death or the environment's leaves instances running, it restarts,
and launches fall back to cold spawns while it is down.

The probe image (images/isolation_probe.py) reports what it sees from the inside as its output
(and, while it holds, in a report file); the tests judge, and look at the live processes from
outside through /proc.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from runtara_core.persistence import Persistence
from runtara_environment.client import ManagementClient
from runtara_environment.fork_launcher import LAUNCHER_MODULE
from tests.environment.conftest import TEST_IMAGES, EnvironmentProcess, MakeEnvironment, wait_until

WAIT_S = 90.0
PROBE = TEST_IMAGES / "isolation_probe.py"
READY_LOG = "fork launcher ready"
STOPPED_LOG = "the fork launcher stopped"
FORK_BANNER = "(fork)"
SPAWN_BANNER = "(cold spawn)"


# --------------------------------------------------------------------------- helpers


def needs_fork(env_launcher: str) -> None:
    if env_launcher != "fork":
        pytest.skip("about the pre-forked launcher itself: the spawn variant has none")


def launcher_processes(environment: EnvironmentProcess) -> list[psutil.Process]:
    """The environment's live fork launcher(s). A forked instance shows the launcher's command
    line too (it is a fork of it), so the launcher is told apart by its working directory "/"."""
    found = []
    try:
        children = psutil.Process(environment.pid).children()
    except psutil.Error:
        return []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if LAUNCHER_MODULE in " ".join(child.cmdline()) and child.cwd() == "/":
                found.append(child)
        except psutil.Error:
            continue
    return found


def launcher_pid(environment: EnvironmentProcess) -> int:
    """The pid of the environment's one launcher, checked against what its log says."""
    found = launcher_processes(environment)
    assert len(found) == 1, f"expected exactly one fork launcher, found {found}"
    logged = re.findall(r"fork launcher ready \(pid (\d+)", environment.log())
    assert logged and int(logged[-1]) == found[0].pid, (logged, found)
    return found[0].pid


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def socket_and_pipe_inodes(pid: int) -> set[str]:
    """The ``socket:[N]`` / ``pipe:[N]`` targets among the descriptors of ``pid``."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(("socket:[", "pipe:[")):
            found.add(target)
    return found


def banners(environment: EnvironmentProcess, instance_id: str) -> list[str]:
    """How each launch of the instance started: "fork" or "cold spawn", in order."""
    log = environment.data_dir / "runs" / instance_id / "stderr.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [m.group(1) for line in lines if (m := re.match(r"--- attempt \d+ launched at \S+ \((.+)\)$", line))]


def expected_banner(env_launcher: str) -> str:
    return "fork" if env_launcher == "fork" else "cold spawn"


def run_dir(environment: EnvironmentProcess, instance_id: str) -> Path:
    return (environment.data_dir / "runs" / instance_id).resolve()


async def register_probe(client: ManagementClient, name: str = "probe", filename: str = "isolation_probe.py") -> None:
    await client.register_image(PROBE.read_bytes(), name=name, filename=filename)


async def run_probe(
    client: ManagementClient, input: dict[str, Any] | None = None, *, image: str = "probe", env: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    started = await client.start_instance(image, input or {}, env=env)
    done = await client.wait(started.instance_id, timeout_s=WAIT_S)
    assert done.status == "completed", (done.status, done.error, done.stderr_tail)
    assert isinstance(done.output, dict)
    return started.instance_id, done.output


class HeldProbe:
    """A probe instance that reports and then holds until released."""

    def __init__(self, client: ManagementClient, tmp_path: Path, tag: str) -> None:
        self.client = client
        self.report = tmp_path / f"{tag}-report.json"
        self.hold = tmp_path / f"{tag}-release"
        self.instance_id = ""

    async def start(self, image: str = "probe", **input: Any) -> dict[str, Any]:
        """Start it and return its report, once it holds."""
        started = await self.client.start_instance(
            image, {"report": str(self.report), "hold_file": str(self.hold), **input}
        )
        self.instance_id = started.instance_id

        async def reported() -> bool:
            return self.report.exists()

        await wait_until(reported, timeout_s=WAIT_S, what=f"probe {self.instance_id} reporting")
        return json.loads(self.report.read_text())

    async def finish(self) -> dict[str, Any]:
        self.hold.touch()
        done = await self.client.wait(self.instance_id, timeout_s=WAIT_S)
        assert done.status == "completed", (done.status, done.error, done.stderr_tail)
        assert isinstance(done.output, dict) and done.output["held"] is True
        return done.output


def log_count(environment: EnvironmentProcess, text: str) -> int:
    return environment.log().count(text)


async def wait_log_count(environment: EnvironmentProcess, text: str, count: int, timeout_s: float = WAIT_S) -> None:
    async def logged() -> bool:
        return log_count(environment, text) >= count

    await wait_until(logged, timeout_s=timeout_s, what=f"{count}x {text!r} in the environment log")


# --------------------------------------------------------------------------- 1. descriptors


async def test_only_stdio_and_its_own_descriptors_are_open(
    environment: EnvironmentProcess, env_launcher: str, tmp_path: Path
) -> None:
    async with environment.client() as client:
        await register_probe(client)
        probe = HeldProbe(client, tmp_path, "fds")
        report = await probe.start()
        rundir = run_dir(environment, probe.instance_id)
        fds: dict[str, str] = report["fds"]

        assert fds["0"] == "/dev/null", fds
        assert os.path.realpath(fds["1"]) == str(rundir / "stdout.log"), fds
        assert os.path.realpath(fds["2"]) == str(rundir / "stderr.log"), fds
        # No file of anyone else: every other descriptor is a socket, pipe or anonymous inode.
        files = {fd: target for fd, target in fds.items() if fd not in ("0", "1", "2") and target.startswith("/")}
        assert not files, f"regular files open in the instance process: {files}"
        # The SDK's own event loop and QUIC socket are there (the probe runs after they opened).
        assert any(t.startswith("socket:[") for t in fds.values()), fds

        # None of its sockets or pipes is shared with the environment or the launcher.
        mine = {t for t in fds.values() if t.startswith(("socket:[", "pipe:["))}
        others = {"environment": environment.pid}
        if env_launcher == "fork":
            others["launcher"] = launcher_pid(environment)
        else:
            assert not launcher_processes(environment)
        for who, pid in others.items():
            shared = mine & socket_and_pipe_inodes(pid)
            assert not shared, f"descriptors inherited from the {who} ({pid}): {shared}; instance fds {fds}"

        output = await probe.finish()
        assert output["fds"] == fds  # what the report said is what the workflow returned
        assert banners(environment, probe.instance_id) == [expected_banner(env_launcher)]


# --------------------------------------------------------------------------- 2. environment


async def test_environment_holds_no_server_secret(make_environment: MakeEnvironment, env_launcher: str) -> None:
    canaries = {
        "CANARY_SECRET": "canary-9f3b7c21-isolation",
        "AWS_SECRET_ACCESS_KEY": "canary-aws-51d0e8aa",
        "PGPASSWORD": "canary-pg-0c4411e2",
    }
    environment = await make_environment(extra_env=canaries)
    assert environment.env()["RUNTARA_DATABASE_URL"] == environment.database_url
    secrets = [*canaries.values(), environment.database_url, environment.admin_token]
    async with environment.client() as client:
        await register_probe(client)
        iid, output = await run_probe(client, env={"GREETING": "hi-from-start"})

    env: dict[str, str] = output["env"]
    proc_environ: list[str] = output["proc_environ"]
    cmdline: list[str] = output["proc_cmdline"]
    assert env, output
    assert proc_environ, "an instance process's /proc/self/environ is never empty (PATH at least)"
    seen = [*(f"{k}={v}" for k, v in env.items()), *proc_environ, *cmdline]
    for entry in seen:
        for secret in secrets:
            assert secret not in entry, f"{entry!r} leaks a server secret"
    for name in (*canaries, "RUNTARA_DATABASE_URL", "RUNTARA_DATA_DIR", "RUNTARA_CERTS_DIR", "RUNTARA_ENV_ADDR"):
        assert name not in env, name
        assert not any(e.startswith(f"{name}=") for e in proc_environ), name

    assert env["RUNTARA_INSTANCE_ID"] == iid
    assert env["GREETING"] == "hi-from-start"
    assert env["RUNTARA_INSTANCE_TOKEN"] and env["RUNTARA_INSTANCE_TOKEN"] != environment.admin_token
    assert banners(environment, iid) == [expected_banner(env_launcher)]


# --------------------------------------------------------------------------- 3. session


async def test_own_session_and_process_group(environment: EnvironmentProcess, env_launcher: str) -> None:
    async with environment.client() as client:
        await register_probe(client)
        iid, output = await run_probe(client)
    pid = output["pid"]
    assert output["pgid"] == pid and output["sid"] == pid, output
    outsiders = {environment.pid}
    if env_launcher == "fork":
        outsiders.add(launcher_pid(environment))
    for other in outsiders:
        assert pid != other
        assert os.getpgid(other) != pid and os.getsid(other) != pid
    assert Path(output["cwd"]).resolve() == run_dir(environment, iid)
    assert banners(environment, iid) == [expected_banner(env_launcher)]


# --------------------------------------------------------------------------- 4. module state


async def test_module_state_and_random_do_not_leak_between_instances(
    environment: EnvironmentProcess, env_launcher: str
) -> None:
    async with environment.client() as client:
        await register_probe(client)
        # The same code as another image (another module name).
        await register_probe(client, name="probe-twin", filename="isolation_probe_twin.py")
        runs = [
            await run_probe(client, {"mutate": True}),
            await run_probe(client, {"mutate": True}),
            await run_probe(client, {"mutate": True}, image="probe-twin"),
        ]
    clean = {
        "sdk_module_marked": False,
        "leaked_module_present": False,
        "leaked_variable_present": False,
        "earlier_launches_in_image_module": 0,
    }
    dirty = {
        "sdk_module_marked": True,
        "leaked_module_present": True,
        "leaked_variable_present": True,
        "earlier_launches_in_image_module": 1,
    }
    for iid, output in runs:
        assert output["state"] == clean, (iid, output["state"])
        assert output["after_mutation"] == dirty, (iid, "the probe must see its own mutations")
        assert banners(environment, iid) == [expected_banner(env_launcher)]
    assert len({output["pid"] for _, output in runs}) == 3
    randoms = [output["random"] for _, output in runs]
    assert len(set(randoms)) == len(randoms), randoms


# --------------------------------------------------------------------------- 5. launcher death


async def test_killed_launcher_restarts_and_launches_fall_back_to_cold_spawn(
    environment: EnvironmentProcess, env_launcher: str, tmp_path: Path
) -> None:
    needs_fork(env_launcher)
    async with environment.client() as client:
        await register_probe(client)
        running = HeldProbe(client, tmp_path, "running")
        report = await running.start()
        assert banners(environment, running.instance_id) == ["fork"]
        first = launcher_pid(environment)
        assert report["pid"] != first

        # Launcher killed under a running instance: the instance runs on, still ours.
        os.kill(first, signal.SIGKILL)
        await wait_log_count(environment, STOPPED_LOG, 1)
        assert psutil.Process(report["pid"]).ppid() == environment.pid

        # A launch while the launcher is down is a cold spawn. The window (restart backoff plus
        # the launcher's imports) is short, so this is only conclusive when the launch happened
        # before the next "ready"; each further kill doubles the backoff, widening it.
        cold_spawned = None
        for kill in range(1, 5):
            ready_before = log_count(environment, READY_LOG)
            started = await client.start_instance("probe", {})

            async def launched(iid: str = started.instance_id) -> bool:
                return bool(banners(environment, iid))

            await wait_until(launched, timeout_s=WAIT_S, what="the launch's banner")
            launched_while_down = log_count(environment, READY_LOG) == ready_before
            done = await client.wait(started.instance_id, timeout_s=WAIT_S)
            assert done.status == "completed", (done.status, done.error, done.stderr_tail)
            if launched_while_down:
                cold_spawned = started.instance_id
                break
            # Inconclusive: the launcher was back first. Kill the new one and try again.
            await wait_log_count(environment, READY_LOG, ready_before + 1)
            os.kill(launcher_pid(environment), signal.SIGKILL)
            await wait_log_count(environment, STOPPED_LOG, kill + 1)
        assert cold_spawned is not None, "no launch happened while the launcher was down"
        assert banners(environment, cold_spawned) == ["cold spawn"]

        # The launcher comes back (a new process) and launches are forks again.
        await wait_log_count(environment, READY_LOG, log_count(environment, STOPPED_LOG) + 1)
        second = launcher_pid(environment)
        assert second != first and is_gone(first)
        forked, output = await run_probe(client)
        assert banners(environment, forked) == ["fork"]
        assert output["ppid"] == environment.pid

        # The instance that ran through all this finishes with the right output.
        finished = await running.finish()
        assert finished["pid"] == report["pid"] and finished["state"] == report["state"]
        assert banners(environment, running.instance_id) == ["fork"]
    assert "could not restart" not in environment.log()


# --------------------------------------------------------------------------- 6. environment death


async def test_environment_crash_leaves_no_launcher_but_instances_live_on(
    environment: EnvironmentProcess, env_launcher: str, tmp_path: Path
) -> None:
    needs_fork(env_launcher)
    async with environment.client() as client:
        await register_probe(client)
        probe = HeldProbe(client, tmp_path, "survivor")
        report = await probe.start()
    launcher = launcher_pid(environment)
    instance = psutil.Process(report["pid"])
    assert instance.ppid() == environment.pid

    await environment.crash()

    async def launcher_gone() -> bool:
        return is_gone(launcher)

    await wait_until(launcher_gone, timeout_s=15, what="the orphaned launcher exiting")
    assert instance.is_running() and instance.status() != psutil.STATUS_ZOMBIE
    assert report["pid"] in {p.pid for p in environment.instance_processes()}

    # A restarted environment adopts it; released, it completes as before the crash.
    await environment.start()
    async with environment.client() as client:
        probe.client = client
        output = await probe.finish()
    assert output["pid"] == report["pid"]
    assert len(launcher_processes(environment)) == 1


# --------------------------------------------------------------------------- 7. PYTHON* variables


async def test_python_variables_launch_cold_and_take_effect(
    environment: EnvironmentProcess, env_launcher: str, tmp_path: Path
) -> None:
    extra = tmp_path / "extra-path"
    extra.mkdir()
    (extra / "isolation_extra_mod.py").write_text('VALUE = "from-pythonpath"\n')
    async with environment.client() as client:
        await register_probe(client)
        iid, output = await run_probe(client, {"import": "isolation_extra_mod"}, env={"PYTHONPATH": str(extra)})
        assert banners(environment, iid) == ["cold spawn"]
        assert str(extra) in output["sys_path"], output["sys_path"]
        assert output["imported"]["ok"] and output["imported"]["value"] == "from-pythonpath", output["imported"]
        assert output["env"]["PYTHONPATH"] == str(extra)

        # Without it, the same import fails, and the launch is the variant's usual one.
        iid, output = await run_probe(client, {"import": "isolation_extra_mod"})
        assert banners(environment, iid) == [expected_banner(env_launcher)]
        assert str(extra) not in output["sys_path"]
        assert output["imported"]["ok"] is False and "ModuleNotFoundError" in output["imported"]["error"]


# --------------------------------------------------------------------------- 8. reaping and metrics


async def test_instance_is_our_child_and_is_reaped_with_metrics(
    environment: EnvironmentProcess, env_launcher: str, tmp_path: Path
) -> None:
    async with environment.client() as client:
        await register_probe(client)
        probe = HeldProbe(client, tmp_path, "metrics")
        report = await probe.start()
        assert banners(environment, probe.instance_id) == [expected_banner(env_launcher)]
        assert psutil.Process(report["pid"]).ppid() == environment.pid
        assert report["ppid"] == environment.pid
        await probe.finish()

        async def measured() -> bool:
            return (await client.get_instance(probe.instance_id)).peak_rss_bytes is not None

        await wait_until(measured, timeout_s=30, what="exit metrics")
        detail = await client.get_instance(probe.instance_id)
        assert detail.peak_rss_bytes is not None and detail.peak_rss_bytes > 5_000_000, detail
        assert detail.cpu_time_ms is not None and detail.cpu_time_ms > 0, detail

    db: Persistence = await environment.open_database()
    try:
        row = await db.get_instance(probe.instance_id)
    finally:
        await db.close()
    assert row is not None
    # An exit code is known only for a process reaped as our child (an adopted one has none).
    assert (row.exit_code, row.exit_signal) == (0, None), row

    async def reaped() -> bool:
        return is_gone(report["pid"])

    await wait_until(reaped, timeout_s=15, what="the instance process reaped")
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(report["pid"]).status()  # not even a zombie: the environment reaped it


# --------------------------------------------------------------------------- 9. finding instances


async def test_instance_processes_finds_a_live_instance(
    environment: EnvironmentProcess, env_launcher: str, tmp_path: Path
) -> None:
    async with environment.client() as client:
        await register_probe(client)
        probe = HeldProbe(client, tmp_path, "found")
        report = await probe.start()
        found = {p.pid for p in environment.instance_processes()}
        assert report["pid"] in found, (report["pid"], found)
        if env_launcher == "fork":
            assert launcher_pid(environment) not in found  # the launcher is not an instance
        await probe.finish()

    async def none_left() -> bool:
        return not environment.instance_processes()

    await wait_until(none_left, timeout_s=30, what="no instance process left")


# --------------------------------------------------------------------------- fork == cold spawn


def comparable(output: dict[str, Any], rundir: Path) -> dict[str, Any]:
    """What must be the same in every launch, whichever way: run-dir paths and the numbers of
    sockets and pipes made neutral."""

    def neutral(value: str) -> str:
        value = value.replace(str(rundir), "<run-dir>")
        return re.sub(r"^(socket|pipe):\[\d+\]$", r"\1", value)

    return {
        "fds": {fd: neutral(os.path.realpath(t) if t.startswith("/") else t) for fd, t in output["fds"].items()},
        "sys_path": [neutral(p) for p in output["sys_path"]],
        "argv": output["argv"],
        "signals": output["signals"],
        "signal_masks": output["signal_masks"],
        "limits": output["limits"],
        "umask": output["umask"],
        "cwd": neutral(str(Path(output["cwd"]).resolve())),
        "env_names": sorted(set(output["env"]) - {"PYTHONHASHSEED"}),
        "state": output["state"],
        "pgid_is_pid": output["pgid"] == output["pid"] == output["sid"],
    }


async def fork_and_cold_spawn(environment: EnvironmentProcess) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """The probe's output forked and cold spawned by the same (fork) environment."""
    async with environment.client() as client:
        await register_probe(client)
        forked, fork_output = await run_probe(client)
        # A PYTHON* variable that changes nothing visible here forces a fresh interpreter.
        cold, cold_output = await run_probe(client, env={"PYTHONHASHSEED": "random"})
    assert banners(environment, forked) == ["fork"]
    assert banners(environment, cold) == ["cold spawn"]
    return fork_output, cold_output, forked, cold


async def test_a_fork_is_the_same_process_as_a_cold_spawn(make_environment: MakeEnvironment, env_launcher: str) -> None:
    needs_fork(env_launcher)
    memory, cpu = 4 * 1024**3, 600
    environment = await make_environment(instance_memory_limit_bytes=memory, instance_cpu_limit_s=cpu)
    fork_output, cold_output, forked, cold = await fork_and_cold_spawn(environment)
    fork_view = comparable(fork_output, run_dir(environment, forked))
    cold_view = comparable(cold_output, run_dir(environment, cold))
    for key in fork_view:
        assert fork_view[key] == cold_view[key], (key, fork_view[key], cold_view[key])
    for output in (fork_output, cold_output):
        assert output["limits"]["RLIMIT_AS"] == [memory, memory]
        assert output["limits"]["RLIMIT_CPU"] == [cpu, cpu]


async def test_fork_keeps_the_cold_locale_coercion_and_main_module(environment: EnvironmentProcess, env_launcher: str) -> None:
    needs_fork(env_launcher)
    fork_output, cold_output, _, _ = await fork_and_cold_spawn(environment)
    assert fork_output["env"].get("LC_CTYPE") == cold_output["env"].get("LC_CTYPE")
    assert fork_output["main_module"] == cold_output["main_module"]


async def test_tz_and_tmpdir_of_a_start_take_effect(environment: EnvironmentProcess, env_launcher: str, tmp_path: Path) -> None:
    """Both are read once per process (libc's timezone, tempfile's cache): a fork must re-read
    them, as a cold interpreter reads them at start (a review found the launcher's kept)."""
    tmpdir = tmp_path / "launch-tmp"
    tmpdir.mkdir()
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "env_dump.py", name="env-dump")
        started = await client.start_instance("env-dump", {}, env={"TZ": "Asia/Tokyo", "TMPDIR": str(tmpdir)})
        done = await client.wait(started.instance_id, timeout_s=WAIT_S)
    assert done.status == "completed", (done.error, done.stderr_tail)
    assert isinstance(done.output, dict)
    assert banners(environment, started.instance_id) == [expected_banner(env_launcher)]
    assert done.output["tzname"] == ["JST", "JST"]
    assert done.output["tempdir"] == str(tmpdir)
