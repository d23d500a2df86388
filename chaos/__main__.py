"""``python -m chaos``: run chaos scenarios with a seed, a size and a time budget.

    python -m chaos                                  # every scenario, both backends, full size
    python -m chaos instance-kills --backend sqlite --seed 3 --trials 500 --budget-s 900
    python -m chaos soak --budget-s 600 --json soak.jsonl

Each scenario prints one line per backend (what RELIABILITY.md reports) and, with ``--json``,
appends its full report (violations included) as one JSON line. The exit code is 1 if any
scenario found a violation, 2 if one could not run. PostgreSQL comes from
RUNTARA_TEST_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.cluster import BACKENDS, ChaosSetupError
from chaos.report import TABLE_HEADER, ScenarioReport, table_row

log = logging.getLogger("chaos")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Scenario:
    name: str
    module: str
    size: str
    """The run() keyword that ``--trials`` sets."""
    default_size: int
    default_budget_s: float

    def runner(self) -> Callable[..., Awaitable[ScenarioReport]]:
        return importlib.import_module(self.module).run  # type: ignore[no-any-return]


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("instance-kills", "chaos.scenarios.instance_kills", "runs", 200, 900),
        Scenario("environment-kills", "chaos.scenarios.environment_kills", "trials", 3, 900),
        Scenario("database-faults", "chaos.scenarios.database_faults", "trials", 3, 900),
        Scenario("races", "chaos.scenarios.races", "trials", 20, 900),
        Scenario("soak", "chaos.scenarios.soak", "rate", 4, 600),  # starts/s: what 2 cores sustain
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"{', '.join([*SCENARIOS, 'fuzz'])} (default: all)")
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock (printed, so a run can be repeated)")
    parser.add_argument("--trials", type=int, default=None, help="the scenario's size: runs, trials, or starts/s for soak")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget per scenario and backend")
    parser.add_argument("--json", type=Path, default=None, help="append each report as a JSON line here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and logs here (default: a temp dir, removed)")
    parser.add_argument("--markdown", action="store_true", help="end with the RELIABILITY.md table of this run")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every scenario's finally ends the servers it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    names = args.scenarios or [*SCENARIOS, "fuzz"]
    unknown = [n for n in names if n not in SCENARIOS and n != "fuzz"]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join([*SCENARIOS, 'fuzz'])}")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    print(f"seed {seed}", flush=True)
    worst = 0
    reports: list[ScenarioReport] = []
    for name in names:
        if name == "fuzz":
            worst = max(worst, run_fuzz(seed, args.trials, args.budget_s))
            continue
        scenario = SCENARIOS[name]
        for backend in backends:
            worst = max(worst, run_one(scenario, backend, seed, args, reports))
    if args.markdown and reports:
        print("\n".join([TABLE_HEADER, *(table_row(r.summary()) for r in reports)]))
    return worst


def run_one(scenario: Scenario, backend: str, seed: int, args: argparse.Namespace, reports: list[ScenarioReport]) -> int:
    size = args.trials if args.trials is not None else scenario.default_size
    budget_s = args.budget_s if args.budget_s is not None else scenario.default_budget_s
    command = reproduce_command(scenario.name, backend, seed, size, budget_s)
    with tempfile.TemporaryDirectory(prefix=f"chaos-{scenario.name}-") as scratch:
        workdir = (args.workdir / f"{scenario.name}-{backend}-{seed}") if args.workdir else Path(scratch)
        kwargs: dict[str, Any] = {"seed": seed, scenario.size: size, "budget_s": budget_s}
        try:
            report = asyncio.run(scenario.runner()(backend, workdir, **kwargs))
        except ChaosSetupError as error:
            print(f"{scenario.name:<18} {backend:<8} cannot run: {error}", flush=True)
            return 2
    report.command = command
    reports.append(report)
    print(report.line(), flush=True)
    for violation in report.audit.violations[:20]:
        print(f"    {violation}", flush=True)
    if args.json is not None:
        with args.json.open("a") as out:
            out.write(report.to_json() + "\n")
    return 0 if report.ok else 1


def reproduce_command(name: str, backend: str, seed: int, size: int, budget_s: float) -> str:
    return f"python -m chaos {name} --backend {backend} --seed {seed} --trials {size} --budget-s {budget_s:g}"


FUZZ_SIZES = {
    "tests/chaos/test_lifecycle_fuzz.py": 50,  # hypothesis examples of 60 steps each, per backend
    "tests/chaos/test_quic_fuzz.py": 12,  # cases per fuzz phase, per endpoint and backend
}
"""The CI size of each fuzzer; ``--trials`` multiplies it (default 4)."""


def run_fuzz(seed: int, trials: int | None, budget_s: float | None) -> int:
    """The fuzzers are hypothesis tests: run each under pytest with this seed and ``trials``
    times its CI size."""
    scale = trials or 4
    worst = 0
    for path, size in FUZZ_SIZES.items():
        env = {**os.environ, "RUNTARA_FUZZ_EXAMPLES": str(size * scale), "RUNTARA_FUZZ_SEED": str(seed)}
        command = [
            sys.executable, "-m", "pytest", "-n", "0", "-q", "-o", "faulthandler_timeout=0",
            f"--hypothesis-seed={seed}", path,
        ]  # fmt: skip
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=REPO, env=env, timeout=budget_s or 3600, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            print(f"fuzz {path}: did not finish in {budget_s}s", flush=True)
            worst = 1
            continue
        tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        print(f"fuzz               both     {tail} in {time.monotonic() - started:.0f}s: "
              f"RUNTARA_FUZZ_EXAMPLES={size * scale} {shlex.join(command[1:])}", flush=True)  # fmt: skip
        if done.returncode != 0:
            print(done.stdout[-5000:], done.stderr[-2000:], sep="\n", flush=True)
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
