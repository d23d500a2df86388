"""Reports what its instance process looks like from the inside, as JSON output (the tests judge).

Input (all optional):
- "report": a path; the findings are also written there (atomically) as soon as they are made,
  so a test can look at the live process while the workflow holds.
- "hold_file": a path; after reporting, wait (plain, non-durable polling, at most "hold_s",
  default 120 s) until that file exists, then return.
- "mutate": true; after reporting, dirty every piece of process state a later instance must not
  see (a global of an SDK module, sys.modules, os.environ, this module's own global), and report
  the same checks again under "after_mutation", so a test can tell the detector works.
- "import": a module name to try to import (e.g. one only reachable through PYTHONPATH).

Output: {"pid", "ppid", "pgid", "sid", "cwd", "fds": {fd: readlink target}, "env", "proc_environ",
"proc_cmdline", "state", "random", "sys_path", "argv", "signals", "signal_masks", "limits", "umask",
"main_module", "imported", "after_mutation", "held"}.
"""

import asyncio
import importlib
import json
import os
import random
import resource
import signal
import sys
import time
import types

import runtara_sdk.serialization as sdk_serialization
from runtara_sdk import workflow

MARK_ATTRIBUTE = "_isolation_probe_mark"
LEAKED_MODULE = "isolation_probe_leaked_module"
LEAKED_VARIABLE = "ISOLATION_PROBE_LEAKED"

LAUNCHES_IN_THIS_PROCESS: list[int] = []
"""A global of the image module itself: a fresh process imports it afresh, so it starts empty."""


def open_descriptors() -> dict[str, str]:
    """fd -> readlink target of every descriptor open now (the listing's own one vanishes)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory descriptor os.listdir used, closed by now
    return found


def module_state() -> dict:
    return {
        "sdk_module_marked": hasattr(sdk_serialization, MARK_ATTRIBUTE),
        "leaked_module_present": LEAKED_MODULE in sys.modules,
        "leaked_variable_present": LEAKED_VARIABLE in os.environ,
        "earlier_launches_in_image_module": len(LAUNCHES_IN_THIS_PROCESS),
    }


def signal_dispositions() -> dict[str, str]:
    found = {}
    for signum in sorted(signal.valid_signals()):
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if handler is None:
            continue
        if handler in (signal.SIG_DFL, signal.SIG_IGN):
            shown = signal.Handlers(handler).name
        else:
            shown = getattr(handler, "__qualname__", repr(handler))
        found[str(int(signum))] = shown
    return found


def signal_masks() -> dict[str, str]:
    """SigBlk / SigIgn / SigCgt of /proc/self/status: the kernel's view of the signals."""
    masks = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("SigBlk", "SigIgn", "SigCgt"):
                masks[name] = value.strip()
    return masks


def limits() -> dict[str, list[int]]:
    return {
        name: list(resource.getrlimit(getattr(resource, name)))
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_CORE")
    }


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def read_proc(name: str) -> list[str]:
    with open(f"/proc/self/{name}", "rb") as f:
        return [part.decode("utf-8", "replace") for part in f.read().split(b"\0") if part]


def mutate() -> None:
    setattr(sdk_serialization, MARK_ATTRIBUTE, "dirty")
    sys.modules[LEAKED_MODULE] = types.ModuleType(LEAKED_MODULE)
    os.environ[LEAKED_VARIABLE] = "dirty"
    LAUNCHES_IN_THIS_PROCESS.append(os.getpid())


def try_import(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except BaseException as error:  # noqa: B036 - reported, judged by the test
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": True, "file": getattr(module, "__file__", None), "value": getattr(module, "VALUE", None)}


def write_report(path: str, findings: dict) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(findings, f)
    os.replace(partial, path)


@workflow
async def main(ctx, input):
    input = input or {}
    findings = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
        "fds": open_descriptors(),
        "env": dict(os.environ),
        "proc_environ": read_proc("environ"),
        "proc_cmdline": read_proc("cmdline"),
        "state": module_state(),
        "random": random.random(),
        "sys_path": list(sys.path),
        "argv": list(sys.argv),
        "signals": signal_dispositions(),
        "signal_masks": signal_masks(),
        "limits": limits(),
        "umask": _umask(),
        "main_module": getattr(sys.modules.get("__main__"), "__file__", None),
        "imported": try_import(input["import"]) if input.get("import") else None,
        "after_mutation": None,
        "held": None,
    }
    if input.get("report"):
        write_report(input["report"], findings)
    if input.get("mutate"):
        mutate()
        findings["after_mutation"] = module_state()
    if input.get("hold_file"):
        deadline = time.monotonic() + float(input.get("hold_s", 120))
        while not os.path.exists(input["hold_file"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        findings["held"] = os.path.exists(input["hold_file"])
    return findings
