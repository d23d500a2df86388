"""``python -m runtara_sdk``: one launch of one instance in a fresh interpreter (the cold way
in; the environment's pre-forked launcher runs the same ``run_instance_process``)."""

from __future__ import annotations

import signal

_early_stop = False


def _stop_during_imports(signum: int, frame: object) -> None:
    global _early_stop
    _early_stop = True


# Before the heavy imports (~0.3 s): a stop that arrives meanwhile becomes a cancel, not a kill.
signal.signal(signal.SIGTERM, _stop_during_imports)

from runtara_sdk.process_main import exit_process, run_instance_process  # noqa: E402

if __name__ == "__main__":
    exit_process(run_instance_process(lambda: _early_stop))
