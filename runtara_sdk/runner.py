"""One launch from start to exit: load the image, register, run the workflow, report.

The runner owns what surrounds the workflow: the background heartbeat (which also polls
signals, in case a push was lost), SIGTERM as cancellation, and the final report (completed
with the JSON output, failed with type, message and traceback, or the cancel acknowledged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from runtara_core.errors import BadRequest, ConfigError, InvalidState, RuntaraError, TransportError
from runtara_sdk import serialization
from runtara_sdk.branches import detached
from runtara_sdk.client import InstanceClient
from runtara_sdk.context import Context, exit_code_from_status
from runtara_sdk.errors import Cancelled, ImageLoadError, LaunchEnded, SerializationError
from runtara_sdk.exit_codes import ExitCode
from runtara_sdk.failpoints import Failpoints
from runtara_sdk.image_loader import load_entrypoint
from runtara_sdk.instance_signals import InstanceSignals
from runtara_sdk.settings import InstanceSettings
from runtara_sdk.workflow_entry import coerce_input

log = logging.getLogger(__name__)


def failure_payload(error: BaseException) -> bytes:
    """What a failed instance stores as its error: JSON a person and a program can read."""
    return json.dumps(
        {
            "type": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        }
    ).encode()


def load_image(settings: InstanceSettings) -> Callable[..., Any]:
    if settings.image_path is None:
        raise ImageLoadError("RUNTARA_IMAGE_PATH is not set: the launch does not say which image to run")
    return load_entrypoint(settings.image_path, settings.image_entrypoint)


async def run_launch(settings: InstanceSettings, *, stop_requested: Callable[[], bool] = lambda: False) -> ExitCode:
    """Run this launch to its end and return the exit code (see ``ExitCode``).

    SIGTERM is a cancel from the start (delivered at the first live call); ``stop_requested``
    says whether one came even earlier, while the launcher was importing.
    """
    signals = InstanceSignals()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, signals.request_cancel, "SIGTERM")
    try:
        return await _run(settings, signals, stop_requested)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _run(settings: InstanceSettings, signals: InstanceSignals, stop_requested: Callable[[], bool]) -> ExitCode:
    entry: Callable[..., Any] | ImageLoadError
    try:
        entry = load_image(settings)
    except ImageLoadError as error:
        entry = error  # reported as the instance's failure once registered
    if stop_requested():
        signals.request_cancel("SIGTERM during start-up")
    try:
        client = InstanceClient(settings, on_push=signals.on_push)
    except (ConfigError, ValueError) as error:
        log.error("cannot start: %s", error)
        return ExitCode.CONFIG_ERROR
    try:
        await client.connect()
    except (LaunchEnded, TransportError) as error:
        log.error("instance %s attempt %d cannot run: %s", settings.instance_id, settings.attempt, error)
        await client.close()
        return ExitCode.LOST
    try:
        return await _run_registered(client, signals, entry, settings)
    finally:
        await client.close()


async def _run_registered(
    client: InstanceClient,
    signals: InstanceSignals,
    entry: Callable[..., Any] | ImageLoadError,
    settings: InstanceSettings,
) -> ExitCode:
    if isinstance(entry, ImageLoadError):
        return await _fail(client, entry)
    assert client.registration is not None
    try:
        workflow_input = coerce_input(entry, serialization.from_json(client.registration.input, "the instance input"))
    except (ValueError, SerializationError) as error:
        return await _fail(client, error)
    context = Context(
        client,
        signals,
        signal_wait_poll_s=settings.signal_wait_poll_s,
        failpoints=Failpoints.for_launch(settings.failpoints, settings.attempt),
    )
    heartbeat = detached(_heartbeat(client, signals, settings.heartbeat_interval_s))
    workflow_task = context.start(guarded(entry), workflow_input)
    try:
        await asyncio.wait({workflow_task, context.finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        heartbeat.cancel()
    if context.finished.done():
        code = context.finished.result()
        if code is ExitCode.SUSPENDED:
            await _best_effort(client.event("suspended", b"exiting"))
        return code
    return await _report(client, context, workflow_task)


def guarded(entry: Callable[..., Any]) -> Callable[..., Any]:
    """The entrypoint, with an exit attempt from workflow code turned into a failure to report."""

    async def run(context: Context, workflow_input: Any) -> Any:
        try:
            return await entry(context, workflow_input)
        except (SystemExit, KeyboardInterrupt) as exit_attempt:
            raise RuntimeError(
                f"the workflow raised {type(exit_attempt).__name__}({exit_attempt}): return a value or "
                "raise an exception to end it; the SDK reports the outcome"
            ) from exit_attempt

    return run


async def _report(client: InstanceClient, context: Context, workflow_task: asyncio.Task[Any]) -> ExitCode:
    if workflow_task.cancelled():
        return await _fail(client, RuntimeError("the workflow's task was cancelled (asyncio.CancelledError escaped it)"))
    error = workflow_task.exception()
    if context.nondeterminism is not None:
        return await _fail(client, context.nondeterminism)
    if isinstance(error, Cancelled):
        log.info("instance %s cancelled: %s", client.instance_id, error)
        try:
            await client.ack_signal("cancel")
        except InvalidState:
            pass  # cancelled by SIGTERM alone: the environment that sent it records the stop
        except LaunchEnded:
            return ExitCode.LOST
        return ExitCode.CANCELLED
    if error is not None:
        return await _fail(client, error)
    try:
        output = serialization.to_json(workflow_task.result(), "the workflow's return value")
    except SerializationError as bad_output:
        return await _fail(client, bad_output)
    return await _reported(client, client.completed(output), ExitCode.COMPLETED)


async def _fail(client: InstanceClient, error: BaseException) -> ExitCode:
    log.error("instance %s failed: %s: %s", client.instance_id, type(error).__qualname__, error)
    return await _reported(client, client.failed(failure_payload(error)), ExitCode.FAILED)


async def _reported(client: InstanceClient, report: Any, code: ExitCode) -> ExitCode:
    try:
        await report
    except InvalidState as refused:  # the instance moved on meanwhile (cancelled, say)
        log.warning("core refused the report: %s", refused.message)
        return await exit_code_from_status(client)
    except BadRequest as refused:  # e.g. an output over the size limit: fail with that reason
        if code is ExitCode.FAILED:
            return await _reported(client, client.failed(failure_payload(RuntimeError(refused.message[:4096]))), code)
        return await _fail(client, SerializationError(f"the workflow's output cannot be stored: {refused.message}"))
    except LaunchEnded as ended:
        log.error("could not report: %s", ended)
        return ExitCode.LOST
    return code


async def _best_effort(request: Any) -> None:
    try:
        await asyncio.wait_for(request, 5)
    except (RuntaraError, LaunchEnded, TimeoutError) as error:
        log.debug("ignored: %s", error)


async def _heartbeat(client: InstanceClient, signals: InstanceSignals, interval_s: float) -> None:
    """Prove liveness when nothing else did, and poll signals in case a push was lost."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            if time.monotonic() - client.last_liveness >= interval_s * 0.9:
                await client.heartbeat()
            signals.note(await client.poll_signals())
        except (LaunchEnded, InvalidState) as error:
            log.debug("heartbeat stopped: %s", error)
            return
        except RuntaraError as error:  # one failed beat: the next may pass
            log.warning("heartbeat failed: %s", error)
