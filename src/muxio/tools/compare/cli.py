"""`muxio compare`'s command line: the only part of compare that speaks of --flags.

Every option is checked, and the output directory proven writable, before
the first server starts: a typo must not cost a half-hour run.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from muxio.cmdline import run_reporting
from muxio.errors import UsageError

from .orchestration import expected_seconds, run_compare
from .report import prepare_out_dir, render_markdown, write_outputs
from .servers import ServerSpec, TLSFiles, available_servers, make_tls_files, select_servers
from .workloads import DEFAULT_WORKLOADS, Workload, parse_workloads

T = TypeVar("T")


def configure_parser(p: argparse.ArgumentParser) -> None:
    names = ", ".join(s.name for s in available_servers())
    p.add_argument("--servers", help=f"comma list (default all available here: {names})")
    p.add_argument(
        "--workloads",
        default=DEFAULT_WORKLOADS,
        help="comma list of CONNxBYTES[k][+IDLEidle] (default %(default)s)",
    )
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds (default 1)")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds; each cell shows the median and min-max over them (default 3)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="load generator processes (default: CPUs left after the server's, 2 to 4)",
    )
    p.add_argument("--out", type=Path, help="directory for compare.md, compare.json, compare.png")
    p.add_argument(
        "--tls",
        action="store_true",
        help="every server over TLS (the servers that have it), the load unverified",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="with --tls: the servers' certificate")
    p.add_argument(
        "--tls-key", metavar="FILE", help="with --tls: its key (default: a throwaway pair)"
    )


def _flag(flag: str, check: Callable[[], T]) -> T:
    """Run a library check; its one-line error gains the flag it is about."""
    try:
        return check()
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _check_numbers(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration {args.duration:g} must be a positive number of seconds, "
                         "e.g. --duration 3")  # fmt: skip
    if not (math.isfinite(args.warmup) and args.warmup >= 0):
        raise UsageError(f"--warmup {args.warmup:g} must be 0 or more seconds, e.g. --warmup 1")
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat} must be at least 1, e.g. --repeat 3")
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes {args.processes} must be at least 1, or left out")


def _check_tls_flags(args: argparse.Namespace) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: the certificate and its key")
    if args.tls_cert is not None and not args.tls:
        raise UsageError("--tls-cert and --tls-key apply with --tls only; add --tls")


def _tls_files(args: argparse.Namespace, scratch: str) -> TLSFiles | None:
    if not args.tls:
        return None
    from muxio.cmdline import server_tls

    if args.tls_cert is None:
        tls = _flag("--tls", lambda: make_tls_files(scratch))
    else:
        tls = TLSFiles(args.tls_cert, args.tls_key)
    # the same checks, the same one-line errors as `muxio serve`
    server_tls(
        argparse.Namespace(
            tls_cert=tls.cert, tls_key=tls.key, tls_client_ca=None, tls_key_password_file=None
        )
    )
    return tls


def describe_plan(
    servers: list[ServerSpec], workloads: list[Workload], args: argparse.Namespace
) -> str:
    runs = len(servers) * len(workloads) * args.repeat
    seconds = expected_seconds(runs, args.duration, args.warmup)
    until = time.strftime("%H:%M", time.localtime(time.time() + seconds))
    return (
        f"muxio compare: {_count(len(servers), 'server')} ({', '.join(s.name for s in servers)}) "
        f"x {_count(len(workloads), 'workload')} ({', '.join(w.name for w in workloads)}) "
        f"x {_count(args.repeat, 'repeat')} = {_count(runs, 'run')}\n"
        f"muxio compare: each run {args.warmup:g} s warmup + {args.duration:g} s measured + "
        f"about 1 s to start and stop: about {_duration(seconds)} in all (until about {until})"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="muxio-compare-") as scratch:
        return _main(args, scratch)


def _main(args: argparse.Namespace, scratch: str) -> int:
    _check_tls_flags(args)
    # TLS only changes which servers can run; the real files are made once all else is known
    probe = TLSFiles("", "") if args.tls else None
    servers = _flag("--servers", lambda: select_servers(args.servers, probe))
    workloads = _flag("--workloads", lambda: parse_workloads(args.workloads))
    _check_numbers(args)
    if args.out is not None:
        _flag("--out", lambda: prepare_out_dir(args.out))
    tls = _tls_files(args, scratch)
    if tls is not None:
        servers = select_servers(",".join(s.name for s in servers), tls)
    print(describe_plan(servers, workloads, args), file=sys.stderr, flush=True)
    # SIGTERM takes the Ctrl-C path so every server subprocess is still stopped.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = run_compare(
            servers,
            workloads,
            duration=args.duration,
            warmup=args.warmup,
            repeat=args.repeat,
            processes=args.processes,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
            tls=tls is not None,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render_markdown(report), end="")
    if args.out is not None:
        written, notes = _flag("--out", lambda: write_outputs(report, args.out))
        for note in notes:
            print(f"muxio compare: {note}", file=sys.stderr)
        print(f"muxio compare: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 130 if report.meta["interrupted"] else 0


def standalone(argv: list[str] | None = None) -> int:
    """`python -m muxio.tools.compare`, with `muxio compare`'s one-line errors."""
    from muxio.cmdline import Parser

    parser = Parser(prog="muxio compare", description=sys.modules[__package__ or ""].__doc__)
    configure_parser(parser)
    return run_reporting(lambda: main(parser.parse_args(argv)))
