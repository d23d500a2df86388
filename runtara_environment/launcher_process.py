"""The pre-forked launcher (a zygote): ``python -m runtara_environment.launcher_process FD``.

Started once per environment with a clean environment. It imports the SDK and its heavy
dependencies (aioquic, TLS, msgpack, pydantic: about 0.6 s of CPU that a cold spawn pays on
every launch), then waits on the socket ``FD`` for ``ForkRequest``s. It opens no other socket,
no file and no event loop, and never imports image code, so every child starts from the same
pristine state and one image cannot leak into another's children.

Each request forks twice. The middle child forks the instance process, waits until it leads
its own process group with its stop handler installed, passes its pid to the launcher and exits,
which re-parents the instance process to the environment (a child subreaper, see
``fork_launcher``). Only then does the launcher answer, so the environment reaps the process
itself, reads its exit status and resource usage, and keeps supervising it if this launcher
dies. The instance process makes itself the clean process a cold spawn is (``_reset_process``)
and runs the same ``run_instance_process`` as ``python -m runtara_sdk``.
"""

from __future__ import annotations

import time

_imports_started = time.perf_counter()

import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402
from importlib.util import find_spec  # noqa: E402
from typing import NoReturn  # noqa: E402

from runtara_core.errors import RuntaraError  # noqa: E402
from runtara_core.wire.frame_codec import FrameDecoder, encode_frame, unpack_payload  # noqa: E402
from runtara_environment.launcher_warmup import warm_up  # noqa: E402
from runtara_environment.fork_messages import (  # noqa: E402
    MAX_FORK_MESSAGE_BYTES,
    ForkFailed,
    Forked,
    ForkRequest,
    Ready,
)
from runtara_sdk.exit_codes import ExitCode  # noqa: E402
from runtara_sdk.process_main import EarlyStop, exit_process, run_instance_process  # noqa: E402

_SDK_MAIN = find_spec("runtara_sdk.__main__")
SDK_MAIN_PATH = _SDK_MAIN.origin if _SDK_MAIN and _SDK_MAIN.origin else "runtara_sdk"
"""``sys.argv[0]`` of a cold launch, which the forked child takes on too."""


def _startup_locale_coercion() -> str | None:
    """The LC_CTYPE this interpreter set in its own environment at start-up (PEP 538 coerces
    the C locale to a UTF-8 one): a cold launch with the same locale variables sets the same,
    so the child must have it too. None when nothing was coerced."""
    try:
        with open("/proc/self/environ", "rb") as f:
            initial = {entry.partition(b"=")[0] for entry in f.read().split(b"\0") if entry}
    except OSError:
        return None
    if b"LC_CTYPE" in initial:
        return None
    return os.environ.get("LC_CTYPE")


_COERCED_LC_CTYPE = _startup_locale_coercion()

_STARTUP_SIGNALS = {signal.SIGPIPE: signal.SIG_IGN, signal.SIGXFSZ: signal.SIG_IGN, signal.SIGINT: signal.default_int_handler}
"""What a fresh CPython sets at start-up; every other signal starts at its default action."""


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: python -m runtara_environment.launcher_process FD (started by the environment)\n")
        return 2
    channel = socket.socket(fileno=int(argv[1]))
    channel.setblocking(True)
    # A Ctrl-C at the terminal reaches the environment, which stops us by closing the channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up()
    ready_ms = int((time.perf_counter() - _imports_started) * 1000)
    gc.collect()
    gc.freeze()  # what is imported now stays shared with every child: the collector never writes to it
    channel.sendall(encode_frame(Ready(os.getpid(), ready_ms).to_message()))
    decoder = FrameDecoder(MAX_FORK_MESSAGE_BYTES)
    while True:
        data = channel.recv(256 * 1024)
        if not data:
            return 0  # the environment is gone (or stopped us)
        try:
            payloads = decoder.feed(data)
        except RuntaraError as error:
            sys.stderr.write(f"runtara launcher: unreadable request stream ({error}); exiting\n")
            return 1
        for payload in payloads:
            try:
                request = ForkRequest.from_message(unpack_payload(payload))
            except RuntaraError as error:
                channel.sendall(encode_frame(ForkFailed(f"bad fork request: {error}").to_message()))
                continue
            fork_instance(channel, request)


def fork_instance(channel: socket.socket, request: ForkRequest) -> None:
    """Fork the instance process through a short-lived middle child; answer exactly once.

    The answer goes out only after the middle child has exited, so the instance process is
    already the environment's child (exit status and usage are the environment's to collect),
    and only once the instance process leads its own process group with its stop handler in
    place (a stop sent the moment the environment learns the pid is a clean cancel)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing buffered here may be written twice by a child
    pid_read, pid_write = os.pipe()
    try:
        middle = os.fork()
    except OSError as error:
        os.close(pid_read)
        os.close(pid_write)
        channel.sendall(encode_frame(ForkFailed(f"fork failed: {error}").to_message()))
        return
    if middle == 0:
        os.close(pid_read)
        _middle_child(channel, pid_write, request)
    os.close(pid_write)
    with os.fdopen(pid_read, "rb") as pid_pipe:
        reported = pid_pipe.read()  # until the middle child exits
    _, status = os.waitpid(middle, 0)
    if reported.isdigit() and status == 0:
        channel.sendall(encode_frame(Forked(int(reported)).to_message()))
    else:
        detail = reported.decode(errors="replace") or f"wait status {status}"
        channel.sendall(encode_frame(ForkFailed(f"the launch's fork failed: {detail}").to_message()))


def _middle_child(channel: socket.socket, pid_write: int, request: ForkRequest) -> NoReturn:
    """Forks the instance process, waits until it is set up enough to be stopped, tells the
    launcher its pid and exits (which re-parents it to the environment)."""
    code = 0
    try:
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            channel.detach()  # closed with every other inherited descriptor, never by this object
            os.close(ready_read)
            os.close(pid_write)
            become_instance(request, ready_write)
        os.close(ready_write)
        if os.read(ready_read, 1) == b"1":
            os.write(pid_write, str(pid).encode())
        else:
            os.write(pid_write, b"the instance process ended while it was being set up (see its stderr.log)")
            code = 1
    except BaseException as error:  # noqa: B036 - whatever happens, say why and leave
        try:
            os.write(pid_write, f"fork failed: {error}".encode()[:512])
        finally:
            os._exit(1)
    os._exit(code)


def become_instance(request: ForkRequest, ready_write: int) -> NoReturn:
    """Turn this fresh fork into the process a cold spawn would be, then run the instance."""
    early_stop = EarlyStop()
    try:
        os.setsid()  # its own session and process group: stopping it stops what it starts
        early_stop.install()  # from now on a stop is a cancel, as in a cold launch
        os.write(ready_write, b"1")
        os.close(ready_write)
        _reset_process(request)
    except BaseException as error:  # noqa: B036 - report on the launch's stderr and leave
        try:
            os.write(2, f"runtara launcher: could not set up the instance process: {error!r}\n".encode())
        finally:
            os._exit(ExitCode.CONFIG_ERROR)
    code: int = ExitCode.LOST
    try:
        code = run_instance_process(lambda: early_stop.requested)
    finally:
        exit_process(code)


def _reset_process(request: ForkRequest) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
            continue  # SIGTERM already has the launch's own handler
        try:
            signal.signal(signum, _STARTUP_SIGNALS.get(signum, signal.SIG_DFL))
        except (OSError, ValueError):
            pass  # signals the kernel or Python reserve
    _redirect(0, os.devnull, os.O_RDONLY)
    _redirect(1, request.stdout_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    _redirect(2, request.stderr_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.closerange(3, _max_fd())  # the launcher's channel and anything else inherited
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    if _COERCED_LC_CTYPE is not None and not ({"LC_ALL", "LC_CTYPE"} & request.env.keys()):
        os.environ["LC_CTYPE"] = _COERCED_LC_CTYPE  # the launch's locale variables are ours
    time.tzset()  # TZ as the launch has it (libc caches the launcher's)
    tempfile.tempdir = None  # TMPDIR as the launch has it (the warm-up cached the launcher's)
    if request.memory_limit_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (request.memory_limit_bytes, request.memory_limit_bytes))
    if request.cpu_limit_s is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (request.cpu_limit_s, request.cpu_limit_s))
    random.seed()  # also done by CPython's at-fork hook; explicit because it matters
    sys.argv[:] = [SDK_MAIN_PATH]
    sys.modules["__main__"] = _cold_main_module()
    if sys.path and sys.path[0] == _LAUNCHER_CWD:
        sys.path[0] = request.cwd  # `python -m` puts the working directory first


def _cold_main_module() -> types.ModuleType:
    """What ``__main__`` is in a cold launch (``runtara_sdk/__main__.py``), not the launcher."""
    main = types.ModuleType("__main__")
    main.__file__ = SDK_MAIN_PATH
    main.__package__ = "runtara_sdk"
    main.__spec__ = _SDK_MAIN
    main.__loader__ = _SDK_MAIN.loader if _SDK_MAIN else None
    main.__builtins__ = __builtins__
    return main


def _redirect(fd: int, path: str, flags: int) -> None:
    opened = os.open(path, flags, 0o644)
    if opened != fd:
        os.dup2(opened, fd)
        os.close(opened)


def _max_fd() -> int:
    try:
        return max(int(os.sysconf("SC_OPEN_MAX")), 256)
    except (OSError, ValueError):
        return 65536


_LAUNCHER_CWD = os.getcwd()

if __name__ == "__main__":
    sys.exit(main(sys.argv))
