"""Run-directory retention: finished instances' run directories are deleted after a while.

Every launch gets ``DATA_DIR/runs/<instance_id>/`` (stderr.log, stdout.log, the workspace) and
nothing else ever deletes one, so without this a long-running environment keeps one directory
per instance forever. Rules (``RUNTARA_RUN_RETENTION_S``, default 7 days; 0 = at once):

- An entry of ``runs/`` goes only once it has not been modified for the retention, and no
  process of this environment uses it (a live launch, one being launched, one whose exit is
  being handled).
- Its instance must be terminal (completed, failed, cancelled) and finished at least the
  retention ago. Pending, running and suspended instances keep theirs: a suspended one is
  relaunched into it. A failed instance may be resumed later: its relaunch simply creates a new
  directory (``process_runner.prepare_run_dir``).
- An entry no instance row names (a deleted row, garbage) goes after the same time; except the
  hash-named directories of ids made before ids had to be path components
  (``process_runner.run_dir_of``), which are kept: whose they are cannot be told.
- Nothing outside ``runs/`` is touched and no symlink is followed: a symlink in ``runs/`` is
  unlinked itself, and a directory is removed with ``shutil.rmtree`` (which does not follow the
  symlinks inside it).

The decision is pure (``worth_looking_up``, ``choose_removals``): names, mtimes, instance rows,
what is in use, now and the retention in; what to delete out. ``RunRetention`` is the thin
adapter: a timer task that scans the directory and deletes off the event loop, at most
``max_per_pass`` entries per pass (a backlog is worked off in quick successive passes).

Deleting is two steps. On the event loop, with no await between them, each chosen entry is
checked against the supervisor's launches once more and renamed to ``.retired-<random>`` inside
``runs/``; a launch that comes after that finds no directory and creates a fresh one. Then the
retired entries are removed in a thread. Leftover ``.retired-*`` entries (an environment killed
mid-delete) are removed by the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from runtara_core.errors import BadRequest
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import InstanceStatusRow, check_id
from runtara_core.persistence.rules import Clock
from runtara_environment.process_runner import HASHED_RUN_DIR_PREFIX, run_dir_of

log = logging.getLogger(__name__)

RETIRED_PREFIX = ".retired-"
"""Entries being deleted are renamed to this prefix plus a random suffix first."""
DEFAULT_MAX_PER_PASS = 500
LOOKUP_BATCH = 500
"""Instance ids asked of the database per query."""
BACKLOG_INTERVAL_S = 1.0
"""When a pass hit its limit, the next comes this soon (unless the interval is shorter)."""
SETTING = "RUNTARA_RUN_RETENTION_S"


class EntryKind(StrEnum):
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"
    """A regular file or anything else that is not a run directory."""


@dataclass(frozen=True, slots=True)
class RunEntry:
    """One entry of ``runs/`` as scanned (never following a symlink)."""

    name: str
    mtime_ms: int
    kind: EntryKind = EntryKind.DIRECTORY


class Why(StrEnum):
    FINISHED = "finished"
    """Its instance finished at least the retention ago."""
    ORPHAN = "orphan"
    """No instance row names it."""
    RETIRED = "retired"
    """Left over from an interrupted deletion."""


@dataclass(frozen=True, slots=True)
class Removal:
    entry: RunEntry
    why: Why


# --------------------------------------------------------------------------- the decision (pure)


def could_be_instance_id(name: str) -> bool:
    """Whether an instance could have this id (else no row can name it: it is an orphan)."""
    try:
        check_id("instance_id", name)
    except BadRequest:
        return False
    return True


def entry_names(instance_ids: Iterable[str]) -> set[str]:
    """The entries of ``runs/`` these instances' run directories are (``run_dir_of``)."""
    return {run_dir_of(Path(), i).name for i in instance_ids}


def worth_looking_up(
    entries: Iterable[RunEntry], busy: Collection[str], *, now_ms: int, retention_ms: int
) -> list[RunEntry]:
    """The entries that might go, oldest first: not in use, untouched for the retention (or
    retired). Only these are looked up in the database."""
    cutoff = now_ms - retention_ms
    found = [
        e
        for e in entries
        if e.name not in busy and (e.mtime_ms <= cutoff or e.name.startswith(RETIRED_PREFIX))
    ]
    found.sort(key=lambda e: (e.mtime_ms, e.name))
    return found


def choose_removals(
    entries: Iterable[RunEntry],
    rows: Mapping[str, InstanceStatusRow],
    busy: Collection[str],
    *,
    now_ms: int,
    retention_ms: int,
    limit: int,
) -> list[Removal]:
    """What to delete, at most ``limit``, in the order given.

    ``rows`` holds the instance rows of (at least) the entries that have one; an entry missing
    from it has no instance. ``busy`` are the instances a process of this environment uses.
    """
    cutoff = now_ms - retention_ms
    chosen: list[Removal] = []
    for entry in entries:
        if len(chosen) >= limit:
            break
        if entry.name in busy:
            continue
        row = rows.get(entry.name)
        if row is None:
            if entry.name.startswith(HASHED_RUN_DIR_PREFIX):
                continue  # an old id's directory, named by its hash: whose it is cannot be told
            if entry.name.startswith(RETIRED_PREFIX):
                chosen.append(Removal(entry, Why.RETIRED))
            elif entry.mtime_ms <= cutoff:
                chosen.append(Removal(entry, Why.ORPHAN))
            continue
        if not row.is_terminal or entry.mtime_ms > cutoff:
            continue
        # A terminal row always has its finish time; without one the mtime alone decides.
        if row.finished_at_ms is None or row.finished_at_ms <= cutoff:
            chosen.append(Removal(entry, Why.FINISHED))
    return chosen


# --------------------------------------------------------------------------- the filesystem


def scan_runs_dir(runs_dir: Path) -> list[RunEntry]:
    """Every entry of ``runs_dir`` (none if it does not exist), never following symlinks."""
    entries: list[RunEntry] = []
    try:
        scan = os.scandir(runs_dir)
    except FileNotFoundError:
        return entries
    with scan:
        for item in scan:
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we looked
            if stat.S_ISLNK(info.st_mode):
                kind = EntryKind.SYMLINK
            elif stat.S_ISDIR(info.st_mode):
                kind = EntryKind.DIRECTORY
            else:
                kind = EntryKind.OTHER
            entries.append(RunEntry(item.name, info.st_mtime_ns // 1_000_000, kind))
    return entries


def _inside(runs_dir: Path, name: str) -> Path:
    """``runs_dir / name`` for a single path component; refuses anything else."""
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"not an entry of the runs directory: {name!r}")
    return runs_dir / name


def retire(runs_dir: Path, name: str) -> Path:
    """Rename an entry to a fresh ``.retired-*`` name beside it (atomic; a symlink is renamed,
    not followed). Raises OSError (FileNotFoundError if it is gone already)."""
    target = _inside(runs_dir, RETIRED_PREFIX + secrets.token_hex(8))
    os.rename(_inside(runs_dir, name), target)
    return target


def remove_entry(path: Path) -> None:
    """Delete a file, a symlink (itself) or a directory tree; never follows a symlink."""
    info = path.lstat()
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_all(paths: Iterable[Path]) -> list[tuple[Path, OSError]]:
    """Delete each; returns the ones that failed (a vanished one is not a failure)."""
    failed: list[tuple[Path, OSError]] = []
    for path in paths:
        try:
            remove_entry(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            failed.append((path, error))
    return failed


# --------------------------------------------------------------------------- the adapter


class LaunchTracker(Protocol):
    """What the retention needs from the supervisor."""

    def busy_instance_ids(self) -> set[str]: ...

    def launch_mark(self) -> int: ...

    def launched_since(self, mark: int) -> set[str] | None: ...


@dataclass(frozen=True, slots=True)
class PassResult:
    deleted: int
    by_reason: Mapping[Why, int]
    failed: int
    full: bool
    """The pass chose as many as it may: there may be more to delete."""


class RunRetention:
    """Deletes run directories past their retention, every ``interval_s``."""

    def __init__(
        self,
        persistence: Persistence,
        launches: LaunchTracker,
        *,
        runs_dir: Path,
        retention_s: int,
        interval_s: float,
        clock: Clock,
        max_per_pass: int = DEFAULT_MAX_PER_PASS,
    ) -> None:
        self._db = persistence
        self._launches = launches
        self.runs_dir = runs_dir
        self.retention_ms = retention_s * 1000
        self._retention_s = retention_s
        self._interval_s = interval_s
        self._clock = clock
        self._max_per_pass = max_per_pass
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="run-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        delay = self._interval_s
        while True:
            await asyncio.sleep(delay)
            delay = self._interval_s
            try:
                result = await self.run_pass()
            except Exception:
                log.exception("run-directory retention pass failed; retrying in %gs", delay)
                continue
            if result.full:
                delay = min(delay, BACKLOG_INTERVAL_S)

    async def run_pass(self) -> PassResult:
        """One pass: choose (reading the database), then retire and delete what was chosen."""
        mark = self._launches.launch_mark()
        now_ms = self._clock()
        entries = await asyncio.to_thread(scan_runs_dir, self.runs_dir)
        worth = worth_looking_up(
            entries, entry_names(self._launches.busy_instance_ids()), now_ms=now_ms, retention_ms=self.retention_ms
        )
        chosen: list[Removal] = []
        for start in range(0, len(worth), LOOKUP_BATCH):
            batch = worth[start : start + LOOKUP_BATCH]
            ids = [e.name for e in batch if could_be_instance_id(e.name)]
            found = await self._db.get_instance_statuses(ids) if ids else []
            chosen += choose_removals(
                batch,
                {row.instance_id: row for row in found},
                entry_names(self._launches.busy_instance_ids()),
                now_ms=now_ms,
                retention_ms=self.retention_ms,
                limit=self._max_per_pass - len(chosen),
            )
            if len(chosen) >= self._max_per_pass:
                break
        full = len(chosen) >= self._max_per_pass
        retired, why_of, failed = self._retire_chosen(chosen, mark)
        errors = await asyncio.to_thread(remove_all, retired) if retired else []
        failed += len(errors)
        failed_paths = {path for path, _ in errors}
        by_reason: dict[Why, int] = {}
        for path in retired:
            if path not in failed_paths:
                by_reason[why_of[path]] = by_reason.get(why_of[path], 0) + 1
        deleted = sum(by_reason.values())
        if deleted:
            log.info(
                "run retention: deleted %d run director%s (%d of instances finished over %s=%d s ago, "
                "%d without an instance, %d left over)",
                deleted,
                "y" if deleted == 1 else "ies",
                by_reason.get(Why.FINISHED, 0),
                SETTING,
                self._retention_s,
                by_reason.get(Why.ORPHAN, 0),
                by_reason.get(Why.RETIRED, 0),
            )
        if errors:
            log.warning(
                "run retention: could not delete %d entr%s of %s (retried next pass), e.g. %s",
                len(errors),
                "y" if len(errors) == 1 else "ies",
                self.runs_dir,
                errors[0][1],
            )
        return PassResult(deleted, by_reason, failed, full)

    def _retire_chosen(
        self, chosen: list[Removal], mark: int
    ) -> tuple[list[Path], dict[Path, Why], int]:
        """Synchronous on purpose: no launch can start between the check and the rename."""
        if not chosen:
            return [], {}, 0
        launched = self._launches.launched_since(mark)
        if launched is None:
            return [], {}, 0  # too many launches to know which: the next pass decides again
        in_use = entry_names(self._launches.busy_instance_ids() | launched)
        retired: list[Path] = []
        why_of: dict[Path, Why] = {}
        failed = 0
        for removal in chosen:
            if removal.entry.name in in_use:
                continue
            if removal.why is Why.RETIRED:
                path = _inside(self.runs_dir, removal.entry.name)  # already out of every launch's way
            else:
                try:
                    path = retire(self.runs_dir, removal.entry.name)
                except FileNotFoundError:
                    continue
                except OSError as error:
                    failed += 1
                    log.debug("run retention: cannot rename %s: %s", removal.entry.name, error)
                    continue
            retired.append(path)
            why_of[path] = removal.why
        return retired, why_of, failed
