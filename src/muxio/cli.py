"""The `muxio` command: serve, connect, bench, compare, top.

Every user mistake ends as one line on stderr and exit code 2; every runtime
failure as one line and exit code 1.  Tracebacks are for muxio's own bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import platform
import sys
from typing import TYPE_CHECKING

from . import __version__, _build, validate
from .cmdline import (
    Parser,
    add_address_arguments,
    add_tls_client_arguments,
    ascii_int,
    bounded_float,
    bounded_int,
    check_address,
    checked,
    client_tls,
    file_mode,
    positive_int,
    run_reporting,
    server_tls,
    text_checked,
)
from .errors import RuntimeFailure, UsageError
from .pollers import BACKENDS

if TYPE_CHECKING:
    import socket

    from .supervisor import WorkerSpec

LOG_LEVELS = ("debug", "info", "warning", "error")


def worker_count(text: str) -> int:
    """`--workers`: a number, or `auto` for one per CPU."""
    if text.strip().lower() == "auto":
        import os

        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    value = ascii_int(text)
    if value is None or not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: use auto or a whole number from 1 to 256"
        )
    return value


def add_scale_arguments(serve: argparse.ArgumentParser) -> None:
    """Options for running behind balancers, under a service manager, on several cores."""
    from .supervisor import WORKER_TIMEOUT

    serve.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="every connection begins with a PROXY protocol v1 or v2 header (HAProxy's "
        "send-proxy): its client address becomes the peer",
    )
    serve.add_argument(
        "--proxy-protocol-timeout",
        type=checked(validate.header_timeout, "--proxy-protocol-timeout"),
        default=5.0,
        metavar="S",
        help="close a connection whose PROXY header is not complete after S seconds (default 5)",
    )
    serve.add_argument(
        "--fd",
        type=bounded_int(0, 1 << 20),
        action="append",
        default=None,
        metavar="N",
        help="serve the listening socket open on descriptor N (repeatable); systemd's "
        "LISTEN_FDS is used without it",
    )
    serve.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="run N worker processes under a supervisor (auto: one per CPU; default 1)",
    )
    serve.add_argument(
        "--worker-sockets",
        choices=("reuseport", "shared"),
        default=None,
        help="with --workers: one SO_REUSEPORT socket per worker (Linux TCP default) or one "
        "socket shared by all",
    )
    serve.add_argument(
        "--worker-timeout",
        type=checked(validate.worker_timeout, "--worker-timeout"),
        default=WORKER_TIMEOUT,
        metavar="S",
        help="with --workers: kill and replace a worker whose loop sends no heartbeat for "
        f"S seconds (at least 2; 0: never; default {WORKER_TIMEOUT:g})",
    )


def version_line() -> str:
    """Which build runs, since the two differ only in speed and a bug report needs to say."""
    impl = sys.implementation.name
    name = {"cpython": "CPython", "pypy": "PyPy"}.get(impl, impl)
    return f"muxio {__version__} ({_build.describe()}), {name} {platform.python_version()}"


def build_parser(argv: list[str] | None = None) -> Parser:
    """The tools' own options are loaded only when that tool is asked for."""
    parser = Parser(prog="muxio", description="Event-driven TCP servers in pure Python.")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    serve = sub.add_parser("serve", help="run a server (the uppercase echo by default)")
    add_address_arguments(serve)
    serve.add_argument(
        "--poller",
        default=None,
        metavar="NAME",
        help=f"auto or one of {', '.join(BACKENDS)} (default: $MUXIO_POLLER, else auto: "
        "the best this OS has)",
    )
    serve.add_argument(
        "--unix-mode",
        type=file_mode,
        default=None,
        metavar="MODE",
        help="permissions of the --unix socket file, in octal (default: what the umask leaves)",
    )
    serve.add_argument("--backlog", type=bounded_int(1, 65535), default=1024, help="listen backlog")
    serve.add_argument(
        "--service",
        default="upper",
        metavar="NAME|module:factory",
        help="the service to run: a built-in (upper, upper-streams, work; default upper), "
        "or module:factory for a protocol factory or an async def handler(reader, writer) "
        "of your own",
    )
    serve.add_argument(
        "--max-connections",
        type=checked(validate.max_connections, "--max-connections", whole=True),
        default=None,
        metavar="N",
        help="close new connections at once past N open ones",
    )
    serve.add_argument(
        "--idle-timeout",
        type=checked(validate.idle_timeout, "--idle-timeout"),
        default=None,
        metavar="S",
        help="close connections silent in both directions for S seconds (at least 0.1; "
        "0: never)",
    )
    serve.add_argument(
        "--slow-callback-ms",
        type=checked(validate.slow_callback_ms, "--slow-callback-ms"),
        default=None,
        metavar="MS",
        help="warn when a callback holds the loop longer (0 turns the watchdog off; "
        "default: $MUXIO_SLOW_CALLBACK_MS, else 100)",
    )
    serve.add_argument(
        "--metrics",
        type=text_checked(validate.metrics_address, "--metrics"),
        default=None,
        metavar="HOST:PORT",
        help="serve the loop's and the server's metrics for Prometheus at "
        "http://HOST:PORT/metrics (needs: pip install 'muxio[metrics]'; with --workers, "
        "worker N listens on PORT+N)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=checked(validate.shutdown_timeout, "--shutdown-timeout"),
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
        help="worker threads or processes for --offload (default: one per CPU for processes, "
        "CPUs + 4 up to 32 for threads)",
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
    serve.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates issued by the CA certificates in FILE",
    )
    serve.add_argument(
        "--tls-key-password-file",
        metavar="FILE",
        help="the encrypted --tls-key's password, on the first line of FILE",
    )
    serve.add_argument(
        "--profile",
        type=checked(validate.profile_seconds, "--profile"),
        default=None,
        metavar="SECONDS",
        help="profile the loop from the start for SECONDS and write --profile-out "
        "(SIGUSR2 profiles a running server: see docs/observability.md)",
    )
    serve.add_argument(
        "--profile-out",
        default=None,
        metavar="FILE",
        help="where --profile and SIGUSR2 write the profile: speedscope JSON for a .json "
        "FILE, a flame graph for .svg, flame-graph lines (collapsed stacks) otherwise "
        "(default: $MUXIO_PROFILE_OUT, "
        "else a file in the temporary directory; the path is logged)",
    )
    serve.add_argument(
        "--profile-clock",
        default="cpu",
        choices=validate.PROFILE_CLOCKS,
        help="cpu: CPU time, sampled by the loop thread itself (default); wall: also time "
        "blocked in calls such as time.sleep or synchronous I/O",
    )
    add_scale_arguments(serve)

    connect = sub.add_parser(
        "connect", help="talk to a server: interactive on a terminal, like nc when piped"
    )
    add_address_arguments(connect)
    connect.add_argument(
        "--timeout",
        type=bounded_float(86_400),
        default=None,
        metavar="S",
        help="give up when the server has sent nothing for S seconds (default: wait)",
    )
    add_tls_client_arguments(connect)

    report = sub.add_parser(
        "profile-report",
        help="print where a profile's loop time went: top sites, tasks, idle share",
        description="print where a profile's loop time went (a file from muxio serve "
        "--profile, SIGUSR2 or loop.profile()): top sites, tasks, idle share",
    )
    report.add_argument("file", metavar="FILE", help="a .json (speedscope) or collapsed profile")
    report.add_argument(
        "--top", type=bounded_int(1, 1000), default=15, metavar="N", help="sites to list (15)"
    )
    report.add_argument(
        "--flamegraph", metavar="SVG", help="also draw the profile as a flame graph to SVG"
    )

    sub.add_parser(
        "run",
        help="run a program (-m module or script.py) with muxio as its event loop",
        add_help=False,
    )

    for name, summary in (
        ("bench", "load-test a server (echo or line protocol, closed or open loop)"),
        ("compare", "measure muxio against asyncio, uvloop, threads and a naive select loop"),
        ("top", "watch a running server's loop live, from its --metrics endpoint"),
    ):
        tool = sub.add_parser(name, help=summary, description=summary)
        if argv and name in argv[:1]:
            importlib.import_module(f"muxio.tools.{name}").configure_parser(tool)
    return parser


def setup_logging(level: str, worker: int | None = None) -> None:
    name = "muxio" if worker is None else f"muxio[worker {worker}]"
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .supervisor import WorkerSpec

    worker = WorkerSpec.from_environment()
    try:
        return _serve(args, worker)
    except UsageError as exc:
        # a worker's mistake is its supervisor's to report, once, and to stop on
        if worker is not None and worker.report_error(str(exc)):
            return 2
        raise


def _reload_tls(args: argparse.Namespace, contents: dict[str, bytes]) -> dict[str, bytes]:
    """The TLS files again for a reload: regular files re-read, pipes as first read."""
    import stat

    fresh: dict[str, bytes] = {}
    for role, path in (
        ("cert", args.tls_cert),
        ("key", args.tls_key),
        ("client_ca", args.tls_client_ca),
        ("password", args.tls_key_password_file),
    ):
        if path is None or role not in contents:
            continue
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            regular = True  # gone since: let reading it say so
        if not regular:
            fresh[role] = contents[role]  # a pipe was read once, at start
    server_tls(args, fresh)
    return fresh


def _serve(args: argparse.Namespace, worker: WorkerSpec | None) -> int:
    from .activation import socket_from_fd, systemd_sockets
    from .pollers import get_poller_class
    from .runner import ServeConfig, run_service
    from .services import Service, build_service

    sockets: list[socket.socket] | None
    if worker is not None:
        sockets = worker.sockets()
    elif args.fd:
        twice = sorted({fd for fd in args.fd if args.fd.count(fd) > 1})
        if twice:
            raise UsageError(
                f"--fd {twice[0]} is given twice: give each descriptor once "
                "(serving it twice would close it twice)"
            )
        sockets = [socket_from_fd(fd, f"--fd {fd}") for fd in args.fd]
    else:
        sockets = systemd_sockets()
    if sockets is not None and worker is None:
        given = [o for o, v in (("--host", args.host), ("--port", args.port),
                                ("--unix", args.unix)) if v is not None]
        if given:
            source = "--fd" if args.fd else "LISTEN_FDS (systemd)"
            raise UsageError(f"{source} gives the sockets to serve: leave out {', '.join(given)}")
    check_address(args)
    if args.unix_mode is not None and args.unix is None:
        raise UsageError("--unix-mode applies to --unix sockets only")
    if args.worker_sockets is not None and args.workers == 1 and worker is None:
        raise UsageError("--worker-sockets applies with --workers only")
    reuseport = args.worker_sockets == "reuseport" and worker is None
    if reuseport and (sockets is not None or args.unix is not None):
        raise UsageError(
            "--worker-sockets reuseport needs a TCP --host/--port; handed-in and --unix "
            "sockets are shared (use --worker-sockets shared)"
        )
    get_poller_class(args.poller)
    if args.profile_out:
        where = os.path.dirname(os.path.abspath(args.profile_out))
        if not os.path.isdir(where):
            raise UsageError(
                f"--profile-out {args.profile_out}: the directory {where} does not exist "
                "(create it or write elsewhere)"
            )
    tls_contents = worker.tls_contents() if worker is not None else {}
    tls = server_tls(args, tls_contents)
    service = build_service(args.service, args)
    if worker is None and args.workers > 1:
        from .supervisor import supervise

        setup_logging(args.log_level)
        return supervise(
            args, sockets, tls_contents, lambda: _reload_tls(args, tls_contents)
        )
    setup_logging(args.log_level, worker.index if worker is not None else None)
    config = ServeConfig(
        host=args.host,
        port=args.port,
        unix=args.unix,
        unix_mode=args.unix_mode,
        poller=args.poller,
        backlog=args.backlog,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout or None,
        slow_callback_ms=args.slow_callback_ms,
        shutdown_timeout=args.shutdown_timeout,
        service_name=args.service,
        tls=tls,
        tls_client_certs=args.tls_client_ca is not None,
        profile_seconds=args.profile,
        profile_out=args.profile_out,
        profile_clock=args.profile_clock,
        profile_tag=f".worker{worker.index}" if worker is not None else "",
        metrics=_metrics_address(args.metrics, worker),
    )
    factory = service.factory
    if args.proxy_protocol:
        from .proxy_protocol import ProxyProtocolGate

        factory = ProxyProtocolGate.wrap(  # type: ignore[assignment]
            factory, timeout=args.proxy_protocol_timeout
        )
    on_start = service.on_start
    if worker is not None:
        on_start = worker.wrap_on_start(on_start)
    service = Service(factory, on_start=on_start, on_close=service.on_close)
    try:
        totals = run_service(service, config, sockets=sockets)
        if worker is not None:
            worker.report(totals)
        code = 0 if totals.get("drain") == "complete" else 1
    except KeyboardInterrupt:
        code = 1  # one more Ctrl-C after the loop had closed: the summary is out
    exit_despite_threads(code)
    return code


def _metrics_address(
    address: tuple[str, int] | None, worker: WorkerSpec | None
) -> tuple[str, int] | None:
    """Each worker its own port: PORT + its index (port 0 lets each pick one)."""
    if address is None:
        return None
    if importlib.util.find_spec("prometheus_client") is None:
        raise UsageError(
            "--metrics needs the prometheus-client package: pip install 'muxio[metrics]'"
        )
    host, port = address
    if worker is not None and port:
        port += worker.index
        if port > 65535:
            raise UsageError(f"--metrics port {address[1]} + worker {worker.index} is past 65535")
    return host, port


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


def cmd_profile_report(args: argparse.Namespace) -> int:
    from .profiler import Profile, ProfileError

    try:
        profile = Profile.load(args.file)
    except ProfileError as exc:
        raise UsageError(f"{exc}: give a file muxio's profiler wrote") from None
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot read the profile {args.file}: {exc.strerror or exc} (give the path the "
            "'profile written to' log line names)"
        ) from None
    sys.stdout.write(profile.report(args.top))
    if args.flamegraph:
        try:
            profile.write_flamegraph(args.flamegraph, title=os.path.basename(args.file))
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot write the flame graph {args.flamegraph}: {exc.strerror or exc} "
                "(give a path in a directory you can write)"
            ) from None
        sys.stdout.write(f"flame graph written to {args.flamegraph}\n")
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    from .tools.client import run_client

    check_address(args)
    tls, server_name = client_tls(args)
    return run_client(
        args.host, args.port, args.unix, timeout=args.timeout, tls=tls, server_name=server_name
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["run"]:
        return cmd_run(argv[1:])
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return run_reporting(lambda: _dispatch(args))


def serve_loop_defaults(args: argparse.Namespace) -> None:
    """`muxio serve`'s flags win; left out, the loop variables every muxio loop reads apply."""
    from .loopenv import env_poller, env_slow_callback_ms

    if args.poller is None:
        args.poller = env_poller()
    if args.slow_callback_ms is None:
        args.slow_callback_ms = env_slow_callback_ms()


def cmd_run(argv: list[str]) -> int:
    """`muxio run`: everything after it is the program's, so argparse never sees it."""
    from .launch import main as launch

    return run_reporting(lambda: launch(argv))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        serve_loop_defaults(args)
        return cmd_serve(args)
    if args.command == "connect":
        return cmd_connect(args)
    if args.command == "profile-report":
        return cmd_profile_report(args)
    tool = importlib.import_module(f"muxio.tools.{args.command}")
    result: int = tool.main(args)
    return result


__all__ = ["UsageError", "main", "run_reporting"]
