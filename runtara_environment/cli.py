"""``runtara-environment`` (also ``runtara-ctl serve``): run the environment until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from runtara_core.cli import configure_logging
from runtara_core.config import load_settings
from runtara_core.errors import ConfigError
from runtara_environment.management_tokens import admin_token_path
from runtara_environment.server import EnvironmentServer

log = logging.getLogger("runtara_environment")


async def serve(server: EnvironmentServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host, port = await server.start()
    settings = server.settings
    core = server.core.address if server.core else None
    log.info(
        "environment ready: management on %s:%d, core on %s, database %s, node %s",
        host,
        port,
        f"{core[0]}:{core[1]}" if core else f"{settings.core_addr} (external)",
        settings.effective_database_url.split("@")[-1],
        server.node_id,
    )
    if settings.tokens_file is None:
        log.info("admin token: %s (runtara-ctl finds it there)", admin_token_path(settings.data_dir))
    await stop.wait()
    log.info("shutting down; instance processes keep running and are adopted on the next start")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="runtara-environment",
        description="Run the Runtara environment: management protocol, image registry, process "
        "supervisor and wake scheduler, with an embedded core. Configured through RUNTARA_* "
        "environment variables; see README.md.",
    )
    parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        asyncio.run(serve(EnvironmentServer(settings)))
    except ConfigError as error:
        sys.stderr.write(f"runtara-environment: {error}\n")
        return 2
    except OSError as error:
        sys.stderr.write(f"runtara-environment: cannot start: {error}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
