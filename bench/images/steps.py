"""Bench workflow image for ``bench/sdk.py``: an empty async ``@step`` awaited N times.

Input (JSON): ``{"steps": N, "crash_attempts": K}``. The workflow awaits ``empty()`` (an async
``@step`` returning the int 1, like DBOS's bench step) N times and times each await with
``time.perf_counter()``: a live step is one ``checkpoint`` RPC through QUIC plus the durable
save; a replayed one is answered from the history ``register`` returned. On launch attempts
1..K the process SIGKILLs itself after the last step (a crash after 1,000 saved steps, so the
next attempt replays them); otherwise it returns ``{"steps": N}``.

What the parent reads: this launch's measurements, written as JSON to
``$RUNTARA_RUN_DIR/bench-<attempt>.json`` once the completion is acknowledged by core (or just
before the self-kill). To see what a launch costs, the module instruments the SDK's
``InstanceClient`` when it is imported (the launcher imports the image before it connects):
wall times of connect and register, register's round trip and history size, and a count of
RPCs by op (a wrapper call per RPC, well under a microsecond). With ``BENCH_SDK_PROFILE=1`` the
rest of the process (connect, register, workflow, completion) runs under cProfile (thread CPU
time); the stats go to ``$RUNTARA_RUN_DIR/instance-<attempt>.prof``.
"""

from __future__ import annotations

import cProfile
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runtara_sdk import Context, step, workflow
from runtara_sdk.client import InstanceClient

LOADED_AT = time.time()
"""Wall clock when this module ran: interpreter start, SDK imports and the image import done."""

_probe: dict[str, Any] = {"loaded_at": LOADED_AT}
_rpcs: Counter[str] = Counter()
_profile: cProfile.Profile | None = None
if os.environ.get("BENCH_SDK_PROFILE") == "1":
    _profile = cProfile.Profile(time.thread_time)
    _profile.enable()


def _attempt() -> int:
    return int(os.environ.get("RUNTARA_ATTEMPT", "1"))


def _write() -> None:
    """This launch's measurements into the run directory (once)."""
    if _probe.get("written"):
        return
    _probe["written"] = True
    _probe["process_cpu_s"] = time.process_time()
    _probe["rpcs"] = dict(_rpcs)
    run_dir = Path(os.environ.get("RUNTARA_RUN_DIR", "."))
    if _profile is not None:
        _profile.disable()
        _profile.dump_stats(run_dir / f"instance-{_attempt()}.prof")
    path = run_dir / f"bench-{_attempt()}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(_probe))
    partial.replace(path)


# --- instrumentation of the SDK's client (wrappers around the real methods) --------------------

_connect = InstanceClient.connect
_register = InstanceClient._register
_request = InstanceClient._request
_completed = InstanceClient.completed


async def _timed_connect(self: InstanceClient) -> Any:
    _probe["connect_at"] = time.time()
    return await _connect(self)


async def _timed_register(self: InstanceClient, rpc: Any) -> None:
    first = "registered_at" not in _probe
    if first:
        _probe["register_sent_at"] = time.time()
    started = time.perf_counter()
    await _register(self, rpc)
    if first:
        _probe["register_s"] = time.perf_counter() - started
        _probe["registered_at"] = time.time()
        registration = self.registration
        assert registration is not None
        _probe["history"] = len(registration.checkpoints)
        _probe["history_states"] = sum(c.state is not None for c in registration.checkpoints)
        _probe["history_complete"] = registration.history_complete
    else:
        _probe["reconnects"] = _probe.get("reconnects", 0) + 1


async def _counted_request(self: InstanceClient, request: Any, response_type: Any, *, liveness: bool = False) -> Any:
    _rpcs[request.op] += 1
    return await _request(self, request, response_type, liveness=liveness)


async def _timed_completed(self: InstanceClient, output: bytes) -> None:
    started = time.perf_counter()
    await _completed(self, output)
    _probe["completed_s"] = time.perf_counter() - started
    _probe["completed_at"] = time.time()
    _write()


InstanceClient.connect = _timed_connect  # type: ignore[method-assign]
InstanceClient._register = _timed_register  # type: ignore[method-assign]
InstanceClient._request = _counted_request  # type: ignore[method-assign]
InstanceClient.completed = _timed_completed  # type: ignore[method-assign]


# --- the workflow ---------------------------------------------------------------------------------


@step
async def empty() -> int:
    return 1


@workflow
async def main(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    steps = int(params["steps"])
    crash_attempts = int(params.get("crash_attempts", 0))
    _probe["body_at"] = time.time()
    _probe["attempt"] = ctx.attempt
    _probe["replaying_at_start"] = ctx.replaying
    rpcs_before = Counter(_rpcs)
    durations: list[float] = []
    total = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        total += await empty()
        durations.append(time.perf_counter() - t0)
    _probe["loop_s"] = time.perf_counter() - started
    _probe["loop_cpu_s"] = time.process_time() - cpu_started
    _probe["durations_s"] = durations
    _probe["loop_rpcs"] = dict(Counter(_rpcs) - rpcs_before)
    if total != steps:
        raise RuntimeError(f"the steps returned {total}, expected {steps}")
    if ctx.attempt <= crash_attempts:
        _write()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"steps": total}
