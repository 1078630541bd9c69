"""The `muxio` command: serve, connect, bench, compare.

Every user mistake ends as one line on stderr and exit code 2; every runtime
failure as one line and exit code 1.  Tracebacks are for muxio's own bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from . import __version__
from .errors import UsageError, run_reporting
from .pollers import BACKENDS

TYPE_CHECKING = False  # not `from typing`: importing typing costs 1.6 MiB of RSS

if TYPE_CHECKING:
    from typing import NoReturn

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line that says where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: use a number from 0 to 65535"
        ) from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value}: use a number from 0 to 65535")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a whole number above 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: use a number of 0 or more")
    return value


def add_address_arguments(p: argparse.ArgumentParser, default_port: int = 8080) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to use (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=default_port, help="TCP port (default 8080)")
    p.add_argument("--unix", metavar="PATH", help="use a Unix socket instead of TCP")


def build_parser(argv: list[str] | None = None) -> Parser:
    """The tools' own options are loaded only when that tool is asked for."""
    parser = Parser(prog="muxio", description="Event-driven TCP servers in pure Python.")
    parser.add_argument("--version", action="version", version=f"muxio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    serve = sub.add_parser("serve", help="run a server (the uppercase echo by default)")
    add_address_arguments(serve)
    serve.add_argument(
        "--poller",
        default="auto",
        metavar="NAME",
        help=f"auto or one of {', '.join(BACKENDS)} (default auto: the best this OS has)",
    )
    serve.add_argument("--backlog", type=positive_int, default=1024, help="listen backlog")
    serve.add_argument("--service", default="upper", help="the service to run (default upper)")
    serve.add_argument(
        "--max-connections",
        type=positive_int,
        default=None,
        metavar="N",
        help="close new connections at once past N open ones",
    )
    serve.add_argument(
        "--idle-timeout",
        type=non_negative_float,
        default=None,
        metavar="S",
        help="close connections silent in both directions for S seconds",
    )
    serve.add_argument(
        "--slow-callback-ms",
        type=non_negative_float,
        default=100.0,
        metavar="MS",
        help="warn when a callback holds the loop longer (0 turns the watchdog off)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=non_negative_float,
        default=10.0,
        metavar="S",
        help="on SIGINT/SIGTERM, abort connections still flushing after S seconds",
    )
    serve.add_argument(
        "--offload",
        default="processes",
        choices=("none", "threads", "processes"),
        help="where the work service runs CPU-heavy requests (default processes)",
    )
    serve.add_argument(
        "--pool-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker threads or processes for --offload (default: one per CPU for processes)",
    )
    serve.add_argument(
        "--max-jobs-per-connection",
        type=positive_int,
        default=None,
        metavar="N",
        help="for --service work: work requests of one connection in the pool at once (default 1)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=LOG_LEVELS, type=str.lower, help="default info"
    )

    connect = sub.add_parser(
        "connect", help="talk to a server: interactive on a terminal, like nc when piped"
    )
    add_address_arguments(connect)

    for name, summary in (
        ("bench", "load-test an uppercase-echo server"),
        ("compare", "measure muxio against asyncio, uvloop, threads and a naive select loop"),
    ):
        tool = sub.add_parser(name, help=summary, description=summary)
        if argv and name in argv[:1]:
            importlib.import_module(f"muxio.tools.{name}").configure_parser(tool)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s muxio %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .pollers import get_poller_class
    from .runner import ServeConfig, serve
    from .services import build_service

    get_poller_class(args.poller)
    factory = build_service(args.service, args)
    setup_logging(args.log_level)
    config = ServeConfig(
        host=args.host,
        port=args.port,
        unix=args.unix,
        poller=args.poller,
        backlog=args.backlog,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout or None,
        slow_callback_ms=args.slow_callback_ms,
        shutdown_timeout=args.shutdown_timeout,
        service_name=args.service,
    )
    # a service with resources to start on the loop and release after it (a pool)
    try:
        totals = serve(
            factory,
            config,
            on_start=getattr(factory, "on_start", None),
            on_close=getattr(factory, "on_close", None),
        )
        code = 0 if totals.get("drain") == "complete" else 1
    except KeyboardInterrupt:
        code = 1  # one more Ctrl-C after the loop had closed: the summary is out
    exit_despite_threads(code)
    return code


def exit_despite_threads(code: int) -> None:
    """Exit now if worker threads are still running jobs that were given up on.

    Python joins every non-daemon thread at exit, and a
    `ThreadPoolExecutor` joins its workers even if they were daemons, so a
    `work 10000` left running in a thread would hold the exit for 10 s past
    `--shutdown-timeout` (and past a second signal).  A thread cannot be
    stopped, so once the summary is logged and the output flushed nothing is
    left to lose: `os._exit` ends the process without waiting for them.
    """
    import os
    import signal
    import threading

    # the server is gone; one more Ctrl-C must not interrupt the exit with a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main = threading.main_thread()
    busy = [t for t in threading.enumerate() if t is not main and not t.daemon]
    for thread in busy:
        thread.join(0.05)  # idle pool threads are on their way out
    busy = [t for t in busy if t.is_alive()]
    if not busy:
        return
    logging.getLogger("muxio").warning(
        "exiting with %d threads still running abandoned work", len(busy)
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def cmd_connect(args: argparse.Namespace) -> int:
    from .tools.client import run

    return run(args.host, args.port, args.unix)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    return run_reporting(lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "connect":
        return cmd_connect(args)
    tool = importlib.import_module(f"muxio.tools.{args.command}")
    result: int = tool.main(args)
    return result


__all__ = ["UsageError", "main"]
