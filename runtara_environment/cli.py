"""``runtara-environment``: the management server arrives with the "Environment" issue."""

from __future__ import annotations

import sys

NOT_YET = (
    "{prog}: not yet available: the environment (image registry, process runner, wake "
    "scheduler) has not landed yet. Run `runtara-core` to start the core server.\n"
)


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write(NOT_YET.format(prog="runtara-environment"))
    return 2
