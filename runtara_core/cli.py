"""``runtara-core``: run the core server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from runtara_core.config import Settings, load_settings
from runtara_core.errors import ConfigError
from runtara_core.server import CoreServer

log = logging.getLogger("runtara_core")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("quic").setLevel(logging.WARNING)


async def wait_for_stop_signal() -> None:
    """Until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def run_server(prog: str, serve: Callable[[Settings], Coroutine[Any, Any, None]]) -> int:
    """Load the settings, set up logging and run ``serve``; what stops a server from starting
    (a bad setting, a port in use) is one line on stderr and an exit code, not a traceback."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        asyncio.run(serve(settings))
    except ConfigError as error:
        sys.stderr.write(f"{prog}: {error}\n")
        return 2
    except OSError as error:
        sys.stderr.write(f"{prog}: cannot start: {error}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def serve(settings: Settings) -> None:
    server = CoreServer(settings)
    host, port = await server.start()
    log.info("core ready on %s:%d, database %s", host, port, settings.effective_database_url.split("@")[-1])
    await wait_for_stop_signal()
    log.info("shutting down")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runtara-core",
        description="Run the Runtara core server (instance protocol over QUIC). "
        "Configured through RUNTARA_* environment variables; see README.md.",
    )
    parser.parse_args(argv)
    return run_server("runtara-core", serve)
