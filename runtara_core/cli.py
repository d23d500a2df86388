"""``runtara-core``: run the core server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from runtara_core.config import load_settings
from runtara_core.errors import ConfigError
from runtara_core.server import CoreServer

log = logging.getLogger("runtara_core")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("quic").setLevel(logging.WARNING)


async def serve(server: CoreServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host, port = await server.start()
    log.info("core ready on %s:%d, database %s", host, port, server.settings.effective_database_url.split("@")[-1])
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runtara-core",
        description="Run the Runtara core server (instance protocol over QUIC). "
        "Configured through RUNTARA_* environment variables; see README.md.",
    )
    parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        asyncio.run(serve(CoreServer(settings)))
    except ConfigError as error:
        sys.stderr.write(f"runtara-core: {error}\n")
        return 2
    except OSError as error:
        sys.stderr.write(f"runtara-core: cannot start: {error}\n")
        return 1
    return 0
