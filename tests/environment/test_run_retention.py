"""Run-directory retention: the pure decision, the filesystem adapter on a temporary directory,
and a real environment process deleting the run directories of finished instances only."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Collection
from pathlib import Path

import pytest

from runtara_core.config import load_settings
from runtara_core.errors import ConfigError
from runtara_core.persistence.rows import InstanceStatus, InstanceStatusRow
from runtara_environment.client import ManagementClient
from runtara_environment.ctl_render import RUN_DIR_REMOVED_NOTE, render_logs
from runtara_environment.process_runner import HASHED_RUN_DIR_PREFIX, run_dir_of
from runtara_environment.run_retention import (
    RETIRED_PREFIX,
    EntryKind,
    RunEntry,
    RunRetention,
    Why,
    choose_removals,
    could_be_instance_id,
    entry_names,
    scan_runs_dir,
    worth_looking_up,
)
from runtara_environment.supervisor import Supervisor
from tests.environment.conftest import TEST_IMAGES, EnvironmentProcess, MakeEnvironment, wait_until

DAY_MS = 24 * 3600 * 1000
NOW = 100 * DAY_MS
RETENTION = 7 * DAY_MS
OLD = NOW - RETENTION - 1
RECENT = NOW - RETENTION + 1


def row(name: str, status: InstanceStatus, finished_at_ms: int | None = None) -> InstanceStatusRow:
    return InstanceStatusRow(name, InstanceStatus(status), finished_at_ms, None)


def decide(
    entries: list[RunEntry],
    rows: list[InstanceStatusRow],
    busy: Collection[str] = (),
    *,
    retention_ms: int = RETENTION,
    limit: int = 100,
) -> dict[str, Why]:
    worth = worth_looking_up(entries, busy, now_ms=NOW, retention_ms=retention_ms)
    chosen = choose_removals(
        worth, {r.instance_id: r for r in rows}, busy, now_ms=NOW, retention_ms=retention_ms, limit=limit
    )
    return {removal.entry.name: removal.why for removal in chosen}


# --------------------------------------------------------------------------- the pure decision


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_terminal_instances_past_the_retention_go(status: str) -> None:
    entries = [RunEntry("old", OLD), RunEntry("fresh", OLD)]
    rows = [row("old", status, OLD), row("fresh", status, RECENT)]
    assert decide(entries, rows) == {"old": Why.FINISHED}


@pytest.mark.parametrize("status", ["pending", "running", "suspended"])
def test_unfinished_instances_keep_theirs_however_old(status: str) -> None:
    assert decide([RunEntry("i", 0)], [row("i", status)]) == {}
    assert decide([RunEntry("i", 0)], [row("i", status)], retention_ms=0) == {}


def test_a_directory_in_use_is_kept_whatever_its_row_says() -> None:
    entries = [RunEntry("done", OLD), RunEntry("gone", OLD)]
    rows = [row("done", "completed", OLD)]
    assert decide(entries, rows, busy={"done", "gone"}) == {}
    assert worth_looking_up(entries, {"done"}, now_ms=NOW, retention_ms=RETENTION) == [entries[1]]


def test_a_directory_touched_within_the_retention_is_kept() -> None:
    """Its instance finished long ago by its row, but something wrote there lately (a launch
    the row does not show yet): not now."""
    assert decide([RunEntry("i", RECENT)], [row("i", "completed", OLD)]) == {}


def test_the_choice_itself_rechecks_use_and_age() -> None:
    """``choose_removals`` gets entries picked before a database read: what became busy or
    was touched meanwhile is not chosen, even though it was worth looking up."""
    entries = [RunEntry("launched-meanwhile", OLD), RunEntry("touched", RECENT), RunEntry("done", OLD)]
    rows = {name: row(name, "completed", OLD) for name in ("launched-meanwhile", "touched", "done")}
    chosen = choose_removals(
        entries, rows, {"launched-meanwhile"}, now_ms=NOW, retention_ms=RETENTION, limit=10
    )
    assert [(c.entry.name, c.why) for c in chosen] == [("done", Why.FINISHED)]


def test_retention_zero_deletes_once_terminal() -> None:
    entries = [RunEntry("done", NOW), RunEntry("live", NOW), RunEntry("sleeping", NOW)]
    rows = [row("done", "completed", NOW), row("live", "completed", NOW), row("sleeping", "suspended")]
    assert decide(entries, rows, busy={"live"}, retention_ms=0) == {"done": Why.FINISHED}


def test_orphans_go_after_the_retention_and_retired_ones_at_once() -> None:
    entries = [
        RunEntry("orphan-old", OLD),
        RunEntry("orphan-new", RECENT),
        RunEntry("stray-file", OLD, EntryKind.OTHER),
        RunEntry("stray-link", OLD, EntryKind.SYMLINK),
        RunEntry(f"{RETIRED_PREFIX}abc", NOW),
    ]
    assert decide(entries, []) == {
        "orphan-old": Why.ORPHAN,
        "stray-file": Why.ORPHAN,
        "stray-link": Why.ORPHAN,
        f"{RETIRED_PREFIX}abc": Why.RETIRED,
    }


def test_an_instance_named_like_a_retired_entry_is_judged_by_its_row() -> None:
    name = f"{RETIRED_PREFIX}mine"
    assert decide([RunEntry(name, NOW)], [row(name, "running")]) == {}
    assert decide([RunEntry(name, NOW)], [], busy={name}) == {}


def test_oldest_first_and_at_most_the_limit() -> None:
    entries = [RunEntry(f"i{n}", OLD - n) for n in range(10)]
    rows = [row(f"i{n}", "completed", OLD - n) for n in range(10)]
    chosen = decide(entries, rows, limit=3)
    assert list(chosen) == ["i9", "i8", "i7"]


def test_a_terminal_row_without_a_finish_time_falls_back_to_the_mtime() -> None:
    assert decide([RunEntry("i", OLD)], [row("i", "failed", None)]) == {"i": Why.FINISHED}


def test_an_old_id_that_is_no_path_component_has_a_hash_named_directory_that_is_kept() -> None:
    hashed = run_dir_of(Path("/runs"), "team/job-1")
    assert hashed.parent == Path("/runs") and hashed.name.startswith(HASHED_RUN_DIR_PREFIX)
    assert run_dir_of(Path("/runs"), "..") != Path("/runs/..") and run_dir_of(Path("/runs"), "ok-1") == Path("/runs/ok-1")
    assert entry_names(["plain", "team/job-1"]) == {"plain", hashed.name}
    assert decide([RunEntry(hashed.name, OLD)], []) == {}


def test_names_no_instance_could_have() -> None:
    assert could_be_instance_id("order-1")
    assert not could_be_instance_id("x" * 256)
    assert not could_be_instance_id("bad\udcff")  # undecodable bytes from the filesystem


def test_the_setting_defaults_to_a_week_and_refuses_negatives() -> None:
    assert load_settings().run_retention_s == 604800
    assert load_settings(run_retention_s=0).run_retention_s == 0
    with pytest.raises(ConfigError, match="RUNTARA_RUN_RETENTION_S"):
        load_settings(run_retention_s=-1)


def test_logs_say_the_run_directory_was_removed() -> None:
    assert render_logs("boom\n") == "boom"
    assert render_logs(None) == "(no stderr output)"
    assert render_logs("boom\n", run_dir_removed=True) == f"boom\n{RUN_DIR_REMOVED_NOTE}"
    assert "RUNTARA_RUN_RETENTION_S" in RUN_DIR_REMOVED_NOTE


# --------------------------------------------------------------------------- the adapter


class FakeDb:
    def __init__(self, rows: list[InstanceStatusRow]) -> None:
        self.rows = {r.instance_id: r for r in rows}
        self.asked: list[list[str]] = []

    async def get_instance_statuses(self, ids: Collection[str]) -> list[InstanceStatusRow]:
        self.asked.append(list(ids))
        return [self.rows[i] for i in ids if i in self.rows]


class FakeLaunches:
    def __init__(self) -> None:
        self.busy: set[str] = set()
        self.seq = 0
        self.launched: list[tuple[int, str]] = []

    def busy_instance_ids(self) -> set[str]:
        return set(self.busy)

    def launch_mark(self) -> int:
        return self.seq

    def launched_since(self, mark: int) -> set[str] | None:
        return {name for seq, name in self.launched if seq > mark}

    def launch(self, name: str) -> None:
        self.seq += 1
        self.launched.append((self.seq, name))


def make_run_dir(runs: Path, name: str) -> Path:
    path = runs / name
    (path / "work").mkdir(parents=True)
    (path / "stderr.log").write_text("--- attempt 1\n")
    (path / "work" / "file").write_text("x")
    return path


def retention_over(tmp_path: Path, rows: list[InstanceStatusRow], launches: FakeLaunches, **kwargs: int) -> RunRetention:
    return RunRetention(
        FakeDb(rows),  # type: ignore[arg-type]
        launches,
        runs_dir=tmp_path / "runs",
        retention_s=0,
        interval_s=60,
        clock=lambda: int(time.time() * 1000) + 1000,
        **kwargs,
    )


async def test_a_pass_deletes_inside_runs_only_and_never_follows_symlinks(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    make_run_dir(runs, "done")
    make_run_dir(runs, "sleeping")
    make_run_dir(runs, "live")
    (runs / "done" / "work" / "escape").symlink_to(outside)  # inside a run directory
    (runs / "link").symlink_to(outside)  # an entry of runs/ itself
    (runs / "stray.txt").write_text("garbage")
    rows = [
        row("done", "completed", 0),
        row("sleeping", "suspended"),
        row("live", "completed", 0),
    ]
    launches = FakeLaunches()
    launches.busy = {"live"}
    retention = retention_over(tmp_path, rows, launches)

    result = await retention.run_pass()

    assert result.deleted == 3 and result.failed == 0
    assert dict(result.by_reason) == {Why.FINISHED: 1, Why.ORPHAN: 2}
    assert sorted(p.name for p in runs.iterdir()) == ["live", "sleeping"]
    assert (outside / "keep.txt").read_text() == "keep"
    assert (runs / "sleeping" / "work" / "file").exists() and (runs / "live" / "stderr.log").exists()


async def test_an_instance_launched_during_a_pass_keeps_its_directory(tmp_path: Path) -> None:
    """The rows said failed; between reading them and deleting, it was resumed and launched."""
    runs = tmp_path / "runs"
    make_run_dir(runs, "resumed")
    launches = FakeLaunches()
    retention = retention_over(tmp_path, [row("resumed", "failed", 0)], launches)
    db = retention._db  # type: ignore[attr-defined]
    original = db.get_instance_statuses

    async def read_then_launch(ids: Collection[str]) -> list[InstanceStatusRow]:
        found = await original(ids)
        launches.launch("resumed")
        return found

    db.get_instance_statuses = read_then_launch
    assert (await retention.run_pass()).deleted == 0
    assert (runs / "resumed" / "stderr.log").exists()
    db.get_instance_statuses = original
    assert (await retention.run_pass()).deleted == 1  # the next pass sees it as it is


async def test_a_backlog_is_worked_off_a_bounded_number_per_pass(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for n in range(7):
        make_run_dir(runs, f"i{n}")
    (runs / f"{RETIRED_PREFIX}left").mkdir()  # an interrupted earlier deletion
    retention = retention_over(tmp_path, [row(f"i{n}", "completed", 0) for n in range(7)], FakeLaunches(), max_per_pass=3)
    first = await retention.run_pass()
    assert first.deleted == 3 and first.full
    assert [(await retention.run_pass()).deleted for _ in range(3)] == [3, 2, 0]
    assert list(runs.iterdir()) == []


async def test_no_runs_directory_yet_is_nothing_to_do(tmp_path: Path) -> None:
    assert scan_runs_dir(tmp_path / "runs") == []
    result = await retention_over(tmp_path, [], FakeLaunches()).run_pass()
    assert result.deleted == 0 and not result.full


def test_the_supervisor_remembers_launches_since_a_mark() -> None:
    supervisor = Supervisor.__new__(Supervisor)  # only the launch bookkeeping is exercised
    supervisor._launch_seq = 0
    supervisor._recent_launches = deque(maxlen=3)

    def launch(name: str) -> None:  # what Supervisor._launch records
        supervisor._launch_seq += 1
        supervisor._recent_launches.append((supervisor._launch_seq, name))

    mark = supervisor.launch_mark()
    assert supervisor.launched_since(mark) == set()
    for name in ("a", "b"):
        launch(name)
    assert supervisor.launched_since(mark) == {"a", "b"}
    assert supervisor.launched_since(1) == {"b"}
    for name in ("c", "d", "e"):
        launch(name)
    assert supervisor.launched_since(mark) is None  # forgotten: the caller must not guess
    assert supervisor.launched_since(2) == {"c", "d", "e"}


# --------------------------------------------------------------------------- a real environment

WAIT_S = 90.0


async def wait_status(client: ManagementClient, instance_id: str, *statuses: str) -> None:
    async def reached() -> bool:
        return (await client.get_instance(instance_id)).status in statuses

    await wait_until(reached, timeout_s=WAIT_S, what=f"{instance_id} in {statuses}")


async def test_finished_run_directories_go_and_unfinished_ones_stay(
    make_environment: MakeEnvironment, tmp_path: Path
) -> None:
    environment: EnvironmentProcess = await make_environment(
        run_retention_s=0, run_retention_interval_s=0.2, hibernate_after_ms=1000, crash_backoff_initial_ms=50
    )
    runs = environment.data_dir / "runs"
    marker = tmp_path / "crash"
    marker.touch()
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        await client.register_image(TEST_IMAGES / "waiter.py", name="waiter")
        done = await client.start_instance("steps", {"n": 2}, instance_id="done")
        sleeping = await client.start_instance("steps", {"n": 1, "sleep_s": 3600}, instance_id="sleeping")
        waiting = await client.start_instance("waiter", None, instance_id="waiting")
        running = await client.start_instance("steps", {"n": 1000, "step_s": 0.2}, instance_id="running")
        failing = await client.start_instance(
            "steps", {"n": 3, "crash_at": 1, "crash_marker": str(marker)}, instance_id="failing", max_attempts=1
        )
        (runs / "garbage").mkdir(parents=True, exist_ok=True)

        await wait_status(client, done.instance_id, "completed")
        await wait_status(client, failing.instance_id, "failed")
        await wait_status(client, sleeping.instance_id, "suspended")
        await wait_status(client, waiting.instance_id, "suspended")
        await wait_status(client, running.instance_id, "running")

        async def removed(*names: str) -> bool:
            return not any((runs / name).exists() for name in names)

        await wait_until(lambda: removed("done", "failing", "garbage"), timeout_s=30, what="finished run directories removed")
        for name in ("sleeping", "waiting", "running"):
            assert (runs / name / "stderr.log").exists(), name


        async def pass_logged() -> bool:  # the pass logs once its deletes finished, a moment after the renames
            return "run retention: deleted" in environment.log()

        await wait_until(pass_logged, timeout_s=10, what="the retention pass's log line")

        # What is left of a removed one is the row's tail, and the CLI says why there is no more.
        failed = await client.get_instance(failing.instance_id)
        assert failed.run_dir_removed and failed.stderr_tail
        assert not (await client.get_instance(running.instance_id)).run_dir_removed
        code, out, _ = await environment.ctl("instance", "logs", "failing")
        assert code == 0 and "RUNTARA_RUN_RETENTION_S" in out and "attempt 1 launched" in out

        # A failed instance resumed after its run directory went gets a new one and completes.
        marker.unlink()
        await client.resume_instance(failing.instance_id)
        finished = await client.wait(failing.instance_id, timeout_s=WAIT_S)
        assert finished.status == "completed" and finished.output["results"] == [0, 1, 4]

        # Still untouched after a while of passes.
        await asyncio.sleep(1.0)
        for name in ("sleeping", "waiting", "running"):
            assert (runs / name / "stderr.log").exists(), name
        await client.stop_instance(running.instance_id, grace_s=1)
        await wait_until(lambda: removed("running", "failing"), timeout_s=30, what="stopped run directory removed")
        assert (runs / "sleeping").exists() and (runs / "waiting").exists()


async def test_retention_keeps_directories_until_their_time(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(run_retention_s=3600, run_retention_interval_s=0.2)
    runs = environment.data_dir / "runs"
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "empty.py", name="empty")
        done = await client.wait((await client.start_instance("empty", {})).instance_id, timeout_s=WAIT_S)
        assert done.status == "completed"
        old = runs / "old-garbage"
        old.mkdir()
        past = time.time() - 7200
        os.utime(old, (past, past))
        await wait_until(lambda: _gone(old), timeout_s=30, what="old garbage removed")
        assert (runs / done.instance_id / "stderr.log").exists()
        assert not (await client.get_instance(done.instance_id)).run_dir_removed


async def _gone(path: Path) -> bool:
    return not path.exists()
