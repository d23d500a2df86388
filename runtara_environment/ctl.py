"""``runtara-ctl``: the management command line (DESIGN section 11).

Every command but ``serve`` and ``migrate`` opens one ``ManagementClient`` connection, runs one
or a few management ops and prints the result: a table or ``key: value`` block for people, one
JSON document with ``--json`` for scripts. Arguments are fully checked (JSON parsed, files read,
images archived) before connecting, so a typo never costs a round trip. Every failure is one
line on stderr and a documented exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from runtara_core.config import Settings, load_settings
from runtara_core.errors import (
    ConfigError,
    HandshakeError,
    RequestTimeout,
    RuntaraError,
    TransportError,
)
from runtara_core.wire.management_messages import EventRow, InstanceDetail
from runtara_environment import ctl_render as render
from runtara_environment.client import ManagementClient, read_image_source

PROG = "runtara-ctl"
log = logging.getLogger(PROG)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NOT_FINISHED = 4
EXIT_SERVER_ERROR = 5
EXIT_UNREACHABLE = 6
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

STATUSES = ("pending", "running", "suspended", "completed", "failed", "cancelled")
ORDERS = ("created_at", "-created_at", "finished_at", "-finished_at")
DEFAULT_CONNECT_TIMEOUT_S = 5.0

EPILOG = f"""\
exit codes:
  {EXIT_OK}    success; for `instance wait` / `instance start --wait`: the instance completed
  {EXIT_FAILED}    the instance failed (its error is printed)
  {EXIT_USAGE}    bad arguments or configuration (RUNTARA_* settings, token, TLS CA)
  {EXIT_CANCELLED}    the instance was cancelled (or stopped)
  {EXIT_NOT_FINISHED}    the instance did not finish within --wait-timeout / --timeout
  {EXIT_SERVER_ERROR}    the server refused the request (runtara-ctl: CODE: message)
  {EXIT_UNREACHABLE}    the environment could not be reached (start it with `runtara-ctl serve`)
  {EXIT_INTERNAL}   unexpected internal error
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)

configuration comes from RUNTARA_* environment variables (RUNTARA_ENV_ADDR, RUNTARA_TOKEN,
RUNTARA_TLS_CA, RUNTARA_DATA_DIR, ...); --addr and --token override them.
--json prints one JSON document on stdout (`instance watch --json`: one JSON frame per line).
"""


class UsageError(Exception):
    """Bad command-line arguments: one line on stderr, exit 2, nothing sent."""


class CtlArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- argument types (run while parsing: a bad value never reaches the network) ------------------


def json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {render.short(text, 40)!r}") from None


def json_file(path_text: str) -> Any:
    path = Path(path_text)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not valid JSON: {exc}") from None


def json_object_file(path_text: str) -> dict[str, Any]:
    value = json_file(path_text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{path_text} must hold a JSON object (a JSON schema)")
    return value


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_float(text)


def status_list(text: str) -> list[str]:
    statuses = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in statuses if s not in STATUSES]
    if not statuses or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(unknown) or text!r} (choose from {', '.join(STATUSES)})"
        )
    return statuses


# --- parser ---------------------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after any subcommand (SUPPRESS: a later level never resets them)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON document on stdout (for scripts)")
    group.add_argument("--addr", metavar="HOST:PORT", default=argparse.SUPPRESS,
                       help="environment address (overrides RUNTARA_ENV_ADDR)")
    group.add_argument("--token", default=argparse.SUPPRESS,
                       help="management bearer token (overrides RUNTARA_TOKEN)")
    group.add_argument("--connect-timeout", metavar="S", type=positive_float, default=argparse.SUPPRESS,
                       help=f"seconds to wait for the connection (default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log what the client does on stderr")
    return common


def build_parser() -> CtlArgumentParser:
    common = _common_options()
    parser = CtlArgumentParser(
        prog=PROG,
        description="Manage a Runtara environment: images, instances, signals.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(group: Any, name: str, help_text: str, handler: Callable[..., Awaitable[int]]) -> Any:
        sub = group.add_parser(name, help=help_text, description=help_text, parents=[common],
                               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    def tenant_option(sub: Any) -> None:
        sub.add_argument("--tenant", help="act on this tenant (admin tokens only)")

    serve = commands.add_parser("serve", help="run the embedded environment + core",
                                description="Run the environment and core servers in this process.",
                                add_help=False)
    serve.add_argument("serve_args", nargs=argparse.REMAINDER, help="passed to the server")
    serve.set_defaults(local=run_serve)

    leaf(commands, "health", "server version, uptime and instance counts", cmd_health)

    migrate = commands.add_parser("migrate", help="apply pending database migrations", parents=[common])
    migrate.set_defaults(local=run_migrate)

    # image
    image = commands.add_parser("image", help="register, list, inspect and delete images")
    images = image.add_subparsers(dest="image_command", metavar="IMAGE_COMMAND", required=True)
    register = leaf(images, "register", "register a .py file, an archive or a directory", cmd_image_register)
    register.add_argument("path", metavar="PATH", type=Path)
    register.add_argument("--name", required=True)
    register.add_argument("--entrypoint", metavar="module:function")
    register.add_argument("--schema", metavar="FILE", type=json_object_file, help="JSON schema of the input")
    register.add_argument("--description", default="", metavar="TEXT")
    register.add_argument("--metadata", metavar="K=V", type=key_value, action="append", default=[])
    tenant_option(register)
    register.set_defaults(prepare=prepare_image)
    image_list = leaf(images, "list", "list images (every version)", cmd_image_list)
    image_list.add_argument("--name", help="only the versions of this name")
    _page_options(image_list)
    tenant_option(image_list)
    image_get = leaf(images, "get", "show one image (id, or name for its latest version)", cmd_image_get)
    image_get.add_argument("image", metavar="IMAGE")
    tenant_option(image_get)
    image_delete = leaf(images, "delete", "delete an image version", cmd_image_delete)
    image_delete.add_argument("image", metavar="IMAGE")
    tenant_option(image_delete)

    # instance
    instance = commands.add_parser("instance", help="start, inspect and control instances")
    instances = instance.add_subparsers(dest="instance_command", metavar="INSTANCE_COMMAND", required=True)
    start = leaf(instances, "start", "start an instance of an image", cmd_instance_start)
    start.add_argument("image", metavar="IMAGE")
    source = start.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="JSON", type=json_value, dest="input_value")
    source.add_argument("--input-file", metavar="FILE", type=json_file, dest="input_file_value")
    start.add_argument("--id", dest="instance_id", help="instance id (idempotency key)")
    start.add_argument("--timeout", metavar="S", type=positive_float, help="running-time limit")
    start.add_argument("--max-attempts", metavar="N", type=int)
    start.add_argument("--priority", type=int, default=0)
    start.add_argument("--env", metavar="K=V", type=key_value, action="append", default=[])
    start.add_argument("--wait", action="store_true", help="follow the instance until it ends")
    start.add_argument("--wait-timeout", metavar="S", type=positive_float, help="give up waiting after S")
    tenant_option(start)
    get = leaf(instances, "get", "show everything about one instance", cmd_instance_get)
    get.add_argument("instance_id", metavar="ID")
    listing = leaf(instances, "list", "list instances", cmd_instance_list)
    listing.add_argument("--status", metavar="S", type=status_list, action="append",
                         help=f"only these statuses (repeat or comma-separate: {', '.join(STATUSES)})")
    listing.add_argument("--image", metavar="IMAGE", help="only instances of this image")
    listing.add_argument("--order", choices=ORDERS, default="-created_at")
    _page_options(listing)
    tenant_option(listing)
    wait = leaf(instances, "wait", "wait until the instance ends; exit code says how", cmd_instance_wait)
    wait.add_argument("instance_id", metavar="ID")
    wait.add_argument("--timeout", metavar="S", type=positive_float, dest="wait_timeout")
    watch = leaf(instances, "watch", "show the instance's events live until it ends", cmd_instance_watch)
    watch.add_argument("instance_id", metavar="ID")
    watch.add_argument("--after", metavar="EVENT_ID", type=int, default=0, help="replay events after this id")
    stop = leaf(instances, "stop", "stop an instance (SIGTERM, SIGKILL after the grace)", cmd_instance_stop)
    stop.add_argument("instance_id", metavar="ID")
    stop.add_argument("--grace", metavar="S", type=non_negative_float, default=10.0)
    resume = leaf(instances, "resume", "relaunch a paused or failed instance", cmd_instance_resume)
    resume.add_argument("instance_id", metavar="ID")
    logs = leaf(instances, "logs", "print the instance's stderr tail", cmd_instance_logs)
    logs.add_argument("instance_id", metavar="ID")
    events = leaf(instances, "events", "list the instance's events", cmd_instance_events)
    events.add_argument("instance_id", metavar="ID")
    events.add_argument("--after", metavar="EVENT_ID", type=int, default=0)
    events.add_argument("--limit", type=int, default=100)
    checkpoints = leaf(instances, "checkpoints", "list the instance's checkpoints", cmd_instance_checkpoints)
    checkpoints.add_argument("instance_id", metavar="ID")
    _page_options(checkpoints)

    # signal
    signal = commands.add_parser("signal", help="send signals to instances")
    signals = signal.add_subparsers(dest="signal_command", metavar="SIGNAL_COMMAND", required=True)
    for name, help_text in (
        ("cancel", "cancel cooperatively (the workflow sees Cancelled)"),
        ("pause", "pause at the next step boundary"),
        ("resume", "resume a paused instance"),
    ):
        sub = leaf(signals, name, help_text, cmd_signal)
        sub.add_argument("instance_id", metavar="ID")
        sub.set_defaults(signal=name)
    send = leaf(signals, "send", "send a custom signal (consumed by ctx.wait_signal)", cmd_signal_send)
    send.add_argument("instance_id", metavar="ID")
    send.add_argument("name", metavar="NAME")
    send.add_argument("--payload", metavar="JSON", type=json_value)
    return parser


def _page_options(sub: Any) -> None:
    sub.add_argument("--limit", type=int, default=100)
    sub.add_argument("--offset", type=int, default=0)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check ``argv``; raises ``UsageError``. Nothing here touches the network."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        if args.command != "serve":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.serve_args = [*unknown, *args.serve_args]  # the server parses its own options
    for name, default in (("json", False), ("addr", None), ("token", None),
                          ("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S), ("verbose", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    prepare = getattr(args, "prepare", None)
    if prepare is not None:
        prepare(args)
    return args


def prepare_image(args: argparse.Namespace) -> None:
    """Read (or archive) the image now, so a bad PATH is a usage error, not a half-made request."""
    try:
        args.image_data, args.image_filename = read_image_source(args.path)
    except RuntaraError as error:
        raise UsageError(error.message) from None
    except OSError as error:
        raise UsageError(f"cannot read {args.path}: {error.strerror or error}") from None


# --- output -----------------------------------------------------------------------------------


class Console:
    """Where a command's results go: human text, or one JSON document with ``--json``."""

    def __init__(self, *, json_output: bool, out: TextIO, err: TextIO) -> None:
        self.json = json_output
        self.out = out
        self.err = err

    def show(self, value: Any, text: Callable[[], str]) -> None:
        self.line(render.to_json(value) if self.json else text())

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.err.write(f"{PROG}: {text}\n")
        self.err.flush()


# --- exit codes and error lines (pure) ----------------------------------------------------------


def wait_exit_code(detail: InstanceDetail) -> int:
    """0 iff completed; failed 1, cancelled 3, anything not terminal 4."""
    return {
        "completed": EXIT_OK,
        "failed": EXIT_FAILED,
        "cancelled": EXIT_CANCELLED,
    }.get(detail.status, EXIT_NOT_FINISHED)


def describe_error(error: BaseException, address: str | None) -> tuple[str, int]:
    """The one stderr line (without the ``runtara-ctl:`` prefix) and exit code for a failure."""
    where = address or "the environment"
    if isinstance(error, UsageError):
        return f"usage: {error}", EXIT_USAGE
    if isinstance(error, ConfigError):
        return str(error), EXIT_USAGE
    if isinstance(error, RuntaraError):
        return f"{error.code}: {error.message}", EXIT_SERVER_ERROR
    if isinstance(error, HandshakeError):
        return f"cannot connect to {where}: {error}", EXIT_UNREACHABLE
    if isinstance(error, RequestTimeout):
        return f"timed out talking to {where}: {error}", EXIT_UNREACHABLE
    if isinstance(error, TransportError):
        return (
            f"cannot reach the environment at {where}: {error} "
            f"(start it with `{PROG} serve`, or set --addr / RUNTARA_ENV_ADDR)",
            EXIT_UNREACHABLE,
        )
    return f"internal error: {type(error).__name__}: {error}", EXIT_INTERNAL


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- commands -----------------------------------------------------------------------------------

Handler = Callable[[ManagementClient, argparse.Namespace, Console], Awaitable[int]]


async def cmd_health(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    health = await client.health()
    console.show(health, lambda: render.render_health(health))
    return EXIT_OK


async def cmd_image_register(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    image = await client.register_image(
        args.image_data,
        filename=args.image_filename,
        name=args.name,
        entrypoint=args.entrypoint,
        description=args.description,
        input_schema=args.schema,
        metadata=dict(args.metadata),
        tenant=args.tenant,
    )
    console.show(image, lambda: render.render_image(image))
    return EXIT_OK


async def cmd_image_list(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    page = await client.list_images(name=args.name, tenant=args.tenant, limit=args.limit, offset=args.offset)
    console.show(page, lambda: render.render_image_page(page, args.offset))
    return EXIT_OK


async def cmd_image_get(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    image = await client.get_image(args.image, tenant=args.tenant)
    console.show(image, lambda: render.render_image(image))
    return EXIT_OK


async def cmd_image_delete(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    deleted = await client.delete_image(args.image, tenant=args.tenant)
    console.show(deleted, lambda: f"deleted image {deleted.image_id}")
    return EXIT_OK


async def cmd_instance_start(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    started = await client.start_instance(
        args.image,
        args.input_file_value if args.input_file_value is not None else args.input_value,
        instance_id=args.instance_id,
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        env=dict(args.env),
        priority=args.priority,
        tenant=args.tenant,
    )
    if not args.wait:
        console.show(started, lambda: render.render_start(started))
        return EXIT_OK
    if not console.json:
        console.line(render.render_start(started))
    return await _wait_and_report(client, started.instance_id, args.wait_timeout, console)


async def _wait_and_report(
    client: ManagementClient, instance_id: str, timeout_s: float | None, console: Console
) -> int:
    def progress(event: EventRow) -> None:
        if not console.json:
            console.line(render.render_event_line(event))

    try:
        detail = await client.wait(instance_id, timeout_s, on_event=progress)
    except RequestTimeout as timeout:
        console.error(one_line(str(timeout)))
        return EXIT_NOT_FINISHED
    code = wait_exit_code(detail)
    if console.json:
        console.line(render.to_json(detail))
    elif code == EXIT_OK:
        console.line(render.render_outcome(detail))
    else:
        console.error(one_line(render.render_outcome(detail)))
    return code


async def cmd_instance_get(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    detail = await client.get_instance(args.instance_id)
    console.show(detail, lambda: render.render_instance(detail))
    return EXIT_OK


async def cmd_instance_list(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    statuses = None if not args.status else sorted({s for group in args.status for s in group}, key=STATUSES.index)
    page = await client.list_instances(
        status=statuses,
        image=args.image,
        order=args.order,
        limit=args.limit,
        offset=args.offset,
        tenant=args.tenant,
    )
    console.show(page, lambda: render.render_instance_page(page, args.offset))
    return EXIT_OK


async def cmd_instance_wait(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    return await _wait_and_report(client, args.instance_id, args.wait_timeout, console)


async def cmd_instance_watch(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    async for frame in client.watch(args.instance_id, after_id=args.after):
        if console.json:
            console.out.write(json.dumps(render.jsonable(frame), ensure_ascii=False) + "\n")
            console.out.flush()
        elif frame.event is not None:
            console.line(render.render_event_line(frame.event))
        elif frame.status is not None:
            console.line(f"end: {render.render_status_text(frame.status, frame.termination_reason)}")
        else:
            console.line("end")
    return EXIT_OK


async def cmd_instance_stop(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    response = await client.stop_instance(args.instance_id, grace_s=args.grace)
    console.show(response, lambda: render.render_status_change(response))
    return EXIT_OK


async def cmd_instance_resume(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    response = await client.resume_instance(args.instance_id)
    console.show(response, lambda: render.render_status_change(response))
    return EXIT_OK


async def cmd_instance_logs(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    detail = await client.get_instance(args.instance_id)
    console.show(
        {
            "instance_id": detail.instance_id,
            "stderr_tail": detail.stderr_tail,
            "run_dir_removed": detail.run_dir_removed,
        },
        lambda: render.render_logs(detail.stderr_tail, run_dir_removed=detail.run_dir_removed),
    )
    return EXIT_OK


async def cmd_instance_events(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    page = await client.list_events(args.instance_id, after_id=args.after, limit=args.limit)
    console.show(page, lambda: render.render_event_page(page))
    return EXIT_OK


async def cmd_instance_checkpoints(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    page = await client.list_checkpoints(args.instance_id, limit=args.limit, offset=args.offset)
    console.show(page, lambda: render.render_checkpoint_page(page, args.offset))
    return EXIT_OK


async def cmd_signal(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    response = await client.send_signal(args.instance_id, args.signal)
    console.show(response, lambda: f"{args.signal} sent: {render.render_status_change(response)}")
    return EXIT_OK


async def cmd_signal_send(client: ManagementClient, args: argparse.Namespace, console: Console) -> int:
    response = await client.send_custom_signal(args.instance_id, args.name, args.payload)
    console.show(response, lambda: f"signal {args.name!r} queued: {render.render_status_change(response)}")
    return EXIT_OK


# --- running --------------------------------------------------------------------------------------


def load_cli_settings(args: argparse.Namespace) -> Settings:
    """Settings from RUNTARA_* variables, with ``--addr`` winning over RUNTARA_ENV_ADDR."""
    overrides = {"env_addr": args.addr} if args.addr is not None else {}
    return load_settings(**overrides)


async def run_remote(args: argparse.Namespace, console: Console) -> int:
    settings = load_cli_settings(args)
    address = str(settings.env_address)
    client = ManagementClient.from_settings(
        settings, token=args.token, connect_timeout_s=args.connect_timeout
    )
    try:
        await client.connect()
        return await args.handler(client, args, console)
    except (RuntaraError, TransportError) as error:
        line, code = describe_error(error, address)
        console.error(one_line(line))
        return code
    finally:
        await client.close()


def run_serve(args: argparse.Namespace, console: Console) -> int:
    """The embedded environment + core; the server module owns its own arguments."""
    from runtara_environment.cli import main as serve_main

    return serve_main(list(args.serve_args))


def run_migrate(args: argparse.Namespace, console: Console) -> int:
    settings = load_cli_settings(args)

    async def migrate() -> list[str]:
        from runtara_core.persistence import open_persistence

        persistence = await open_persistence(settings.effective_database_url, apply_migrations=False)
        try:
            return await persistence.migrate()
        finally:
            await persistence.close()

    applied = asyncio.run(migrate())
    console.show(
        {"applied": applied},
        lambda: "\n".join(f"applied {name}" for name in applied) if applied else "database is up to date",
    )
    return EXIT_OK


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see ``EPILOG``)."""
    console = Console(json_output=False, out=sys.stdout, err=sys.stderr)
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        console.json = args.json
        _configure_logging(args.verbose)
        local = getattr(args, "local", None)
        if local is not None:
            return local(args, console)
        return asyncio.run(run_remote(args, console))
    except SystemExit as exit_request:  # --help, or a server main returning through sys.exit
        code = exit_request.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, RuntaraError, TransportError) as error:
        line, code = describe_error(error, None)
        console.error(one_line(line))
        return code
    except Exception as error:  # the last resort: one line, never a traceback
        log.debug("unexpected error", exc_info=True)
        line, code = describe_error(error, None)
        console.error(one_line(line))
        return code


if __name__ == "__main__":
    sys.exit(main())
