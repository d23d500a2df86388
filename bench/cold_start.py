"""What a cold instance process pays before its workflow runs: the interpreter and the imports.

Shared by bench/sdk.py and bench/lifecycle.py: median wall times of fresh ``python -c`` runs
and one ``-X importtime`` trace of the launcher's imports.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

IMPORT_TIMEOUT_S = 30.0
LAUNCHER_IMPORT = "import runtara_sdk.runner"
IMPORTTIME_LINE = re.compile(r"import time:\s*(\d+)\s*\|\s*(\d+)\s*\|( *)(\S+)")


@dataclass(frozen=True, slots=True)
class ImportedModule:
    name: str
    depth: int
    self_s: float
    cumulative_s: float


@dataclass(frozen=True, slots=True)
class ColdStart:
    bare_s: float
    """Median wall time of ``python -c pass``."""
    sdk_s: float
    """Median wall time of ``python -c 'import runtara_sdk.runner'``."""
    modules: list[ImportedModule]
    """Every import of one traced run, in trace order."""


def _clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def median_wall_s(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=_clean_env(), cwd=tempfile.gettempdir(), check=True,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=IMPORT_TIMEOUT_S)  # fmt: skip
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))


def measure_cold_start(runs: int) -> ColdStart:
    bare, sdk = median_wall_s("pass", runs), median_wall_s(LAUNCHER_IMPORT, runs)
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", LAUNCHER_IMPORT], env=_clean_env(),
        cwd=tempfile.gettempdir(), check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=IMPORT_TIMEOUT_S,
    )  # fmt: skip
    modules = [
        ImportedModule(m.group(4), len(m.group(3)) // 2, int(m.group(1)) / 1e6, int(m.group(2)) / 1e6)
        for m in IMPORTTIME_LINE.finditer(traced.stderr)
    ]
    return ColdStart(bare, sdk, modules)
