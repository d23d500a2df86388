"""``runtara-environment`` (also ``runtara-ctl serve``): run the environment until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging

from runtara_core.cli import run_server, wait_for_stop_signal
from runtara_core.config import Settings
from runtara_environment.management_tokens import admin_token_path
from runtara_environment.server import EnvironmentServer

log = logging.getLogger("runtara_environment")


async def serve(settings: Settings) -> None:
    server = EnvironmentServer(settings)
    host, port = await server.start()
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
    await wait_for_stop_signal()
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
    return run_server("runtara-environment", serve)
