"""The README's main job: start the embedded environment, run ``images/order`` end to end.

``python -m runtara_environment.quickstart`` starts an environment (with its core) on the
default addresses and data directory, registers the order image, starts one order, prints every
event as it happens and then the output, and shuts down. Everything it uses is what an operator
uses: the same server, the same management client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from runtara_core.cli import configure_logging
from runtara_core.config import load_settings
from runtara_core.errors import ConfigError, RuntaraError, TransportError
from runtara_environment.client import ManagementClient
from runtara_environment.ctl_render import render_event_line
from runtara_environment.server import EnvironmentServer

REPO_IMAGES = Path(__file__).resolve().parents[1] / "images"
SAMPLE_ORDER = {"order_id": "order-1001", "customer": "ada", "amount": 42.0, "items": ["book", "lamp"]}


async def run(image: Path, order: dict[str, object]) -> int:
    settings = load_settings()
    server = EnvironmentServer(settings)
    host, port = await server.start()
    out = sys.stdout
    out.write(f"environment up: management {host}:{port}, data in {settings.data_dir.resolve()}\n")
    try:
        async with ManagementClient.from_settings(settings) as client:
            registered = await client.register_image(image, name=image.stem)
            out.write(f"registered image {registered.name} v{registered.version} ({registered.image_id})\n")
            started = await client.start_instance(registered.image_id, order)
            out.write(f"started instance {started.instance_id}\n")
            async for frame in client.watch(started.instance_id):
                if frame.event is not None:
                    out.write(f"  {render_event_line(frame.event)}\n")
                    out.flush()
            row = await client.get_instance(started.instance_id)
            out.write(f"{row.status} ({row.termination_reason}) after attempt {row.attempt}\n")
            if row.status != "completed":
                out.write(f"error: {row.error}\n")
                return 1
            out.write("output:\n" + json.dumps(row.output, indent=2) + "\n")
            return 0
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtara_environment.quickstart",
        description="Start the embedded environment, run one order through images/order.py, print it.",
    )
    parser.add_argument("--image", type=Path, default=REPO_IMAGES / "order.py", help="workflow file to run")
    parser.add_argument("--input", default=json.dumps(SAMPLE_ORDER), help="its input (JSON)")
    args = parser.parse_args(argv)
    try:
        order = json.loads(args.input)
    except ValueError as error:
        sys.stderr.write(f"quickstart: --input is not JSON: {error}\n")
        return 2
    if not args.image.is_file():
        sys.stderr.write(f"quickstart: no workflow file at {args.image}\n")
        return 2
    try:
        settings = load_settings()
        configure_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
        return asyncio.run(run(args.image, order))
    except ConfigError as error:
        sys.stderr.write(f"quickstart: {error}\n")
        return 2
    except (OSError, RuntaraError, TransportError) as error:
        sys.stderr.write(f"quickstart: {error}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
