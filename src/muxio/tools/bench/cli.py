"""`muxio bench`: the only part of the package that speaks of --flags and exit codes.

Exit 0 when every request got its right reply, 1 when the server failed
(the first failure in one line on stderr, the summary still on stdout), 2
for a setting that cannot work, found before anything runs.
"""

from __future__ import annotations

import argparse
import sys

from muxio.cmdline import (
    Parser,
    add_address_arguments,
    add_tls_client_arguments,
    bounded_int,
    check_address,
    client_tls,
    run_reporting,
)
from muxio.errors import RuntimeFailure, UsageError

from .config import PROTOCOLS, BadSetting, TLSOptions
from .orchestration import MAX_PIPELINE, default_processes, run_bench
from .report import display, format_summary
from .workload import CHECKS

DESCRIPTION = """\
Load-test a server with N connections and check every reply.
--protocol echo (default) sends --size-byte messages and wants each back uppercased,
byte for byte (muxio serve --service upper). --protocol line sends newline-terminated
lines (--request TEXT, or generated ones of --size bytes) and wants one reply line
each, judged by --expect: upper (the request uppercased: --service upper and
--service work), same (the request unchanged) or any (any one line).
Closed loop by default: each reply releases the next request. --rate R is an open
loop: R requests/s per connection on a fixed schedule, latency counted from when
each request was due (as wrk2 does), so a stall shows in the tail.
Exit 0: every reply right; 1: a wrong reply, a stall, a refused connection, a lost
request with --reconnect (the first failure on stderr); 2: bad options."""

_FLAGS = {"requests": "--request", "check": "--expect"}
_REPLY_TIMEOUT = 5.0


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_address_arguments(p)
    p.add_argument(
        "--protocol", choices=PROTOCOLS, default="echo", help="echo (default) or line; see above"
    )
    p.add_argument(
        "--request",
        action="append",
        metavar="TEXT",
        help="with --protocol line: a request line (no newline; it is added); repeat for "
        "several, sent in turn (default: generated lines of --size bytes)",
    )
    p.add_argument(
        "--expect",
        choices=sorted(CHECKS),
        default=None,
        help="with --protocol line: what a right reply line is (default upper)",
    )
    p.add_argument(
        "--connections",
        type=bounded_int(1, 1_000_000),
        default=50,
        metavar="N",
        help="active connections (default 50)",
    )
    p.add_argument(
        "--size",
        type=bounded_int(1, 1 << 26),
        default=1024,
        metavar="B",
        help="bytes per request, a line's newline included (default 1024)",
    )
    p.add_argument(
        "--pipeline",
        type=bounded_int(1, MAX_PIPELINE),
        default=1,
        metavar="N",
        help="requests in flight per connection, replies in order (default 1)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="open loop: R requests per second per connection on a schedule (default: closed loop)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=5.0,
        metavar="S",
        help="measured seconds (default 5)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="S",
        help="unmeasured seconds first (default 1)",
    )
    p.add_argument(
        "--idle",
        type=bounded_int(0, 1_000_000),
        default=0,
        metavar="N",
        help="extra silent connections held open (default 0)",
    )
    p.add_argument(
        "--processes",
        type=bounded_int(1, 1024),
        default=None,
        metavar="N",
        help=f"load generator processes (default {default_processes()})",
    )
    p.add_argument(
        "--reply-timeout",
        type=float,
        default=None,
        metavar="S",
        help="fail a connection that waits S seconds for a reply without getting a byte "
        "(default 5)",
    )
    p.add_argument("--stall-timeout", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="when the server closes a connection cleanly mid-request (a graceful drain), "
        "send the requests again on a new connection instead of counting an error; "
        "requests no graceful drain explains (a reset, a cut reply, a connection closed "
        "before its first reply) are counted as lost, an error",
    )
    p.add_argument(
        "--allow-lost",
        action="store_true",
        help="with --reconnect: report lost requests but exit 0 for them",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_tls_client_arguments(p)


def _line_options(args: argparse.Namespace) -> tuple[list[bytes] | None, str]:
    if args.protocol != "line":
        given = [f for f, v in (("--request", args.request), ("--expect", args.expect)) if v]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{' and '.join(given)} {verb} to --protocol line only")
        return None, "upper"
    if args.request is None:
        return None, args.expect or "upper"
    requests = []
    for text in args.request:
        if "\n" in text or "\r" in text:
            raise UsageError(f"--request {text!r}: one line, without a newline (it is added)")
        requests.append(text.encode("utf-8", "surrogateescape"))
    return requests, args.expect or "upper"


def _reply_timeout(args: argparse.Namespace) -> tuple[float, str]:
    """--stall-timeout is the old name, still taken; errors name whichever was given."""
    if args.stall_timeout is None:
        given = args.reply_timeout
        return (_REPLY_TIMEOUT if given is None else given), "--reply-timeout"
    if args.reply_timeout is not None:
        raise UsageError("--stall-timeout is the old name of --reply-timeout: give one")
    return args.stall_timeout, "--stall-timeout"


def main(args: argparse.Namespace) -> int:
    check_address(args)
    if args.allow_lost and not args.reconnect:
        raise UsageError("--allow-lost applies with --reconnect only")
    reply_timeout, timeout_flag = _reply_timeout(args)
    requests, expect = _line_options(args)
    context, server_name = client_tls(args)
    tls = None if context is None else TLSOptions(args.ca, args.insecure, server_name)
    live = display(sys.stderr)
    try:
        result = run_bench(
            args.host,
            args.port,
            unix=args.unix,
            connections=args.connections,
            size=args.size,
            duration=args.duration,
            warmup=args.warmup,
            idle=args.idle,
            processes=args.processes,
            stall_timeout=reply_timeout,
            hooks=live,
            tls=tls,
            reconnect=args.reconnect,
            protocol=args.protocol,
            requests=requests,
            check=CHECKS[expect] if args.protocol == "line" else None,
            pipeline=args.pipeline,
            rate=args.rate,
            allow_lost=args.allow_lost,
        )
    except BadSetting as exc:
        flags = {**_FLAGS, "stall_timeout": timeout_flag}
        flag = flags.get(exc.parameter, "--" + exc.parameter.replace("_", "-"))
        raise UsageError(f"{flag} {exc.value}: {exc.problem}") from None
    finally:
        if live is not None:
            live.stop()
    print(result.to_json() if args.json else format_summary(result), flush=True)
    if result.ok:
        return 0
    if result.requests and not result.errors.total and result.lost:
        raise RuntimeFailure(
            f"{result.lost} request(s) lost: {result.first_lost}; "
            "the server may have read them and answered none (--allow-lost to accept)"
        )
    if result.first_error:
        slow = result.first_error_kind == "stalls"
        hint = " (raise --reply-timeout if it is only slow)" if slow else ""
        raise RuntimeFailure(result.first_error + hint)
    if result.requests == 0:
        raise RuntimeFailure(f"no request was answered in the {args.duration:g} s window")
    raise RuntimeFailure(f"{result.errors.total} error(s); see the summary")


def standalone(argv: list[str] | None = None) -> int:
    parser = Parser(prog="muxio bench")
    configure_parser(parser)
    return run_reporting(lambda: main(parser.parse_args(argv)))
