"""``runtara-ctl``: the management CLI arrives with the "Environment" issue."""

from __future__ import annotations

import sys

from runtara_environment.cli import NOT_YET


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write(NOT_YET.format(prog="runtara-ctl"))
    return 2
