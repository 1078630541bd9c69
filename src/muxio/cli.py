"""The `muxio` command: serve, connect, bench, compare.

Every user mistake ends as one line on stderr and exit code 2; every runtime
failure as one line and exit code 1.  Tracebacks are for muxio's own bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import MuxioError, RuntimeFailure, UsageError
from .pollers import BACKENDS

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Callable

    from .tls import TLSSetupError

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line that says where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _ascii_int(text: str) -> int | None:
    """An integer written in ASCII digits; `int()` alone also takes other scripts' digits."""
    digits = text.strip()
    if digits.startswith(("+", "-")):
        digits = digits[1:]
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(text.strip(), 10)


def port_number(text: str) -> int:
    value = _ascii_int(text)
    if value is None or not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use a number from 0 to 65535")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number in [low, high], in ASCII digits."""

    def parse(text: str) -> int:
        value = _ascii_int(text)
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: use a whole number from {low} to {high}"
            )
        return value

    return parse


positive_int = bounded_int(1, 1_000_000)


def bounded_float(high: float, low: float = 0.0) -> Callable[[str], float]:
    """An argparse type for a finite number in [low, high]: nan and inf never get through.

    A nan compares false with everything, so a loop waiting for it never ends;
    an inf overflows the first C call that takes it.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: use a number from {_plain(low)} to {_plain(high)}"
            )
        return value

    return parse


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def file_mode(text: str) -> int:
    """Permissions in octal, as chmod takes them (600, 0660)."""
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777 or not text.isascii():
        raise argparse.ArgumentTypeError(
            f"invalid mode {text!r}: use octal permissions such as 600 or 660"
        )
    return value


DEFAULT_PORT = 8080


def add_address_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to use (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=None, help="TCP port (default 8080)")
    p.add_argument("--unix", metavar="PATH", help="use a Unix socket instead of TCP")


def check_address(args: argparse.Namespace) -> None:
    """--unix excludes --host and --port; fill in their defaults otherwise."""
    if args.unix is not None:
        if not args.unix:
            raise UsageError("--unix needs a path (leave it out to use TCP)")
        given = [o for o, v in (("--host", args.host), ("--port", args.port)) if v is not None]
        if given:
            raise UsageError(f"--unix cannot be combined with {' or '.join(given)}")
    if args.host is None:
        args.host = "127.0.0.1"
    if args.port is None:
        args.port = DEFAULT_PORT
    if len(args.host) > 253:
        raise UsageError(f"--host is {len(args.host)} characters; a host name has at most 253")


def add_tls_client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true", help="speak TLS to the server")
    p.add_argument(
        "--ca", metavar="FILE", help="with --tls: trust only the CA certificates in FILE (PEM)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="with --tls: do not verify the server's certificate (testing only)",
    )
    p.add_argument(
        "--server-name",
        metavar="NAME",
        help="with --tls: the name to verify and send as SNI (default: --host)",
    )


def _tls_error(exc: TLSSetupError, options: dict[str, str]) -> Exception:
    """One sentence per way a certificate, key or password file can be wrong."""
    path = exc.path
    opt = options.get(path, "")
    cert = options.get("cert", "")
    if exc.kind == "missing":
        return UsageError(f"{opt} {path}: no such file (check the path)")
    if exc.kind == "unreadable":
        return RuntimeFailure(f"{opt} {path}: cannot read it ({exc.detail})")
    if exc.kind == "not-cert":
        return UsageError(
            f"{opt} {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
        )
    if exc.kind == "not-key":
        return UsageError(
            f"{opt} {path}: not a PEM private key (expected -----BEGIN ... PRIVATE KEY-----)"
        )
    if exc.kind == "mismatch":
        return UsageError(
            f"{opt} {path} is not the key of the certificate in --tls-cert {cert} "
            "(give the key the certificate was issued for)"
        )
    if exc.kind == "needs-password":
        return UsageError(
            f"{opt} {path} is encrypted: give its password with --tls-key-password-file FILE"
        )
    return UsageError(
        f"{opt} {path}: wrong password in --tls-key-password-file "
        f"{options.get('password', '')}"
    )


def server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The context `muxio serve --tls-*` asks for: TLS 1.2+, client certs with a CA given."""
    if args.tls_cert is None and args.tls_key is None:
        extra = [
            o
            for o, v in (
                ("--tls-client-ca", args.tls_client_ca),
                ("--tls-key-password-file", args.tls_key_password_file),
            )
            if v is not None
        ]
        if extra:
            verb = "needs" if len(extra) == 1 else "need"
            raise UsageError(f"{' and '.join(extra)} {verb} --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise UsageError(
            "--tls-cert and --tls-key go together: the certificate and its private key"
        )
    from .tls import TLSSetupError, read_password, server_context

    options = {
        "cert": args.tls_cert,
        "password": args.tls_key_password_file or "",
        args.tls_key_password_file or "": "--tls-key-password-file",
        args.tls_client_ca or "": "--tls-client-ca",
        args.tls_cert: "--tls-cert",
        args.tls_key: "--tls-key",
    }
    try:
        password = None
        if args.tls_key_password_file is not None:
            password = read_password(args.tls_key_password_file)
        return server_context(
            args.tls_cert, args.tls_key, client_ca=args.tls_client_ca, password=password
        )
    except TLSSetupError as exc:
        raise _tls_error(exc, options) from None


def client_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, str | None]:
    """`--tls [--ca FILE | --insecure] [--server-name NAME]`: the context and the name."""
    if not args.tls:
        given = [
            o
            for o, v in (
                ("--ca", args.ca),
                ("--insecure", args.insecure),
                ("--server-name", args.server_name),
            )
            if v
        ]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{' and '.join(given)} {verb} to --tls connections only")
        return None, None
    if args.ca is not None and args.insecure:
        raise UsageError("--ca and --insecure contradict each other: choose one")
    name = args.server_name
    if name is None:
        if getattr(args, "unix", None) is not None and not args.insecure:
            raise UsageError(
                "--tls over --unix needs --server-name NAME: the name in the server's certificate"
            )
        name = args.host or "127.0.0.1"
    from .tls import TLSSetupError, client_context

    try:
        return client_context(args.ca, insecure=args.insecure), name
    except TLSSetupError as exc:
        raise _tls_error(exc, {args.ca or "": "--ca"}) from None


def worker_count(text: str) -> int:
    """`--workers`: a number, or `auto` for one per CPU."""
    if text.strip().lower() == "auto":
        import os

        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    value = _ascii_int(text)
    if value is None or not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: use auto or a whole number from 1 to 256"
        )
    return value


def add_scale_arguments(serve: argparse.ArgumentParser) -> None:
    """Options for running behind balancers, under a service manager, on several cores."""
    serve.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="every connection begins with a PROXY protocol v1 or v2 header (HAProxy's "
        "send-proxy): its client address becomes the peer",
    )
    serve.add_argument(
        "--proxy-protocol-timeout",
        type=bounded_float(3600, 0.001),
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
        type=positive_int,
        default=None,
        metavar="N",
        help="close new connections at once past N open ones",
    )
    serve.add_argument(
        "--idle-timeout",
        type=bounded_float(31_536_000),
        default=None,
        metavar="S",
        help="close connections silent in both directions for S seconds",
    )
    serve.add_argument(
        "--slow-callback-ms",
        type=bounded_float(3_600_000),
        default=None,
        metavar="MS",
        help="warn when a callback holds the loop longer (0 turns the watchdog off; "
        "default: $MUXIO_SLOW_CALLBACK_MS, else 100)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=bounded_float(86_400),
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

    sub.add_parser(
        "run",
        help="run a program (-m module or script.py) with muxio as its event loop",
        add_help=False,
    )

    for name, summary in (
        ("bench", "load-test a server (echo or line protocol, closed or open loop)"),
        ("compare", "measure muxio against asyncio, uvloop, threads and a naive select loop"),
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
    from .activation import socket_from_fd, systemd_sockets
    from .pollers import get_poller_class
    from .runner import ServeConfig, run_service
    from .services import Service, build_service
    from .supervisor import WorkerSpec

    worker = WorkerSpec.from_environment()
    sockets: list[socket.socket] | None
    if worker is not None:
        sockets = worker.sockets()
    elif args.fd:
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
    tls = server_tls(args)
    service = build_service(args.service, args)
    if worker is None and args.workers > 1:
        from .supervisor import supervise

        setup_logging(args.log_level)
        return supervise(args, sockets)
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
    from .tools.client import run_client

    check_address(args)
    tls, server_name = client_tls(args)
    return run_client(
        args.host, args.port, args.unix, timeout=args.timeout, tls=tls, server_name=server_name
    )


def run_reporting(main: Callable[[], int]) -> int:
    """Run a command's body and turn muxio's errors into one line and an exit code.

    Shared by `muxio` and the tools' `python -m` entry points, so every way of
    starting a command fails alike and no user mistake ends in a traceback.
    """
    try:
        return main()
    except MuxioError as exc:
        print(f"muxio: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early, as by `| head`: nothing left to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


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
    tool = importlib.import_module(f"muxio.tools.{args.command}")
    result: int = tool.main(args)
    return result


__all__ = ["UsageError", "main", "run_reporting"]
