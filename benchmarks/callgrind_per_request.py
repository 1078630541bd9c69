"""Instructions per request of each server, counted by callgrind.

CPU time per request drifts 15-25 % between server processes on a shared
machine; instruction counts repeat to a fraction of a percent, so they show a
change in the loop that CPU time would hide. Each server runs under
`valgrind --tool=callgrind`; a built-in driver opens the connections, warms
the server up, waits until every connection is idle, zeroes the counters,
sends a fixed number of requests (each connection sends its next request when
the previous answer is complete, as `muxio bench` does), waits for the last
answer, and dumps. Counting while nothing is in flight means the dump holds
exactly those requests: no connection setup, no half-finished request at
either edge, and no guess at how many requests wrk or bench counted while a
counter command was in flight.

The server is ~50x slower under valgrind, so it sees many ready connections
per poll: the per-request figure amortizes the loop's per-iteration cost
more than a native run at the same connection count does. It is a measure to
compare servers with, not a prediction of native throughput.

    python benchmarks/callgrind_per_request.py [--servers asyncio-protocol,uvloop,...]
        [--connections 100] [--size 1024] [--requests 10000]
        [--http-connections 50] [--http-requests 2000] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from http_compare import http_servers

from muxio.cmdline import run_reporting
from muxio.errors import MuxioError, RuntimeFailure, UsageError
from muxio.tools.compare import ServerSpec, SpecProcess, all_servers, cpu_plan, machine

DEFAULT_SERVERS = (
    "asyncio-protocol,uvloop,muxio-asyncio-protocol,muxio-epoll,"
    "aiohttp-asyncio,aiohttp-uvloop,aiohttp-muxio"
)
# Each server is compared with the same kind of code on asyncio's loop and on uvloop.
REFERENCES = {
    "protocol": ("asyncio-protocol", "uvloop"),
    "streams": ("asyncio-streams", "uvloop-streams"),
    "http": ("aiohttp-asyncio", "aiohttp-uvloop"),
}
_HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_HTTP_BODY = b"Hello, World!"
_TOTALS = re.compile(rb"^(summary|totals):\s+(\d+)", re.MULTILINE)
_STALL_S = 120.0


def kind(name: str) -> str:
    if name.startswith("aiohttp-"):
        return "http"
    return "streams" if "streams" in name else "protocol"


def known_servers() -> dict[str, ServerSpec]:
    """compare's servers, the HTTP ones, and muxio's loop without its watchdog thread."""
    helper = str(Path(__file__).with_name("muxio_no_watchdog.py"))
    quiet = [
        ServerSpec(f"{name}-nowatchdog", (sys.executable, helper, peer))
        for name, peer in (
            ("muxio-asyncio-protocol", "asyncio_protocol"),
            ("muxio-asyncio-streams", "asyncio_streams"),
            ("aiohttp-muxio", "aiohttp_hello"),
        )
    ]
    for spec in all_servers():
        if spec.name.endswith("epoll") and spec.name.startswith("muxio-"):
            quiet.append(
                dataclasses.replace(
                    spec,
                    name=f"{spec.name}-nowatchdog",
                    argv=(*spec.argv, "--slow-callback-ms", "0"),
                )
            )
        elif spec.name.startswith(("muxio-compiled-", "muxio-pure-")):
            peer = spec.argv[-3].rpartition(".")[2]  # python -m muxio.tools.peers.X --loop muxio
            quiet.append(
                dataclasses.replace(
                    spec, name=f"{spec.name}-nowatchdog", argv=(sys.executable, helper, peer)
                )
            )
    return {s.name: s for s in [*all_servers(), *http_servers(), *quiet]}


# --- the fixed-count load -------------------------------------------------------------------


class _Conn:
    __slots__ = ("buf", "left", "need", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.left = 0
        self.buf = bytearray()
        self.need = 0


class Driver:
    """Closed-loop clients that send exactly `per_conn` requests each per call to run()."""

    def __init__(self, port: int, connections: int, size: int, http: bool) -> None:
        self.http = http
        self.request = _HTTP_REQUEST if http else bytes(b"abcdefghij"[i % 10] for i in range(size))
        self.answer = self.request.upper()
        self.sel = selectors.DefaultSelector()
        self.conns: list[_Conn] = []
        try:
            for _ in range(connections):
                s = socket.create_connection(("127.0.0.1", port), timeout=_STALL_S)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
                c = _Conn(s)
                self.conns.append(c)
                self.sel.register(s, selectors.EVENT_READ, c)
        except OSError as exc:
            self.close()
            raise RuntimeFailure(f"cannot connect to the server: {exc}") from exc

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                self.sel.unregister(c.sock)
            c.sock.close()
        self.conns.clear()
        self.sel.close()

    def _send(self, c: _Conn) -> None:
        c.buf.clear()
        c.need = 0 if self.http else len(self.answer)
        c.sock.sendall(self.request)

    def _complete(self, c: _Conn) -> bool:
        """Whether c.buf holds one whole answer; raises when it holds a wrong one."""
        if not self.http:
            if len(c.buf) < c.need:
                return False
            if c.buf != self.answer:
                raise RuntimeFailure("the server answered with other bytes than the uppercase echo")
            return True
        if not c.need:
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(c.buf[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeFailure(f"the server answered {head.splitlines()[0]!r}")
            m = re.search(rb"content-length:\s*(\d+)", head)
            if m is None:
                raise RuntimeFailure("the server's answer has no Content-Length")
            c.need = end + 4 + int(m.group(1))
        if len(c.buf) < c.need:
            return False
        if not c.buf.endswith(_HTTP_BODY) or len(c.buf) != c.need:
            raise RuntimeFailure("the server's HTTP answer is not the hello body")
        return True

    def run(self, per_conn: int) -> int:
        """Send per_conn requests on every connection; returns the answers counted."""
        pending = 0
        for c in self.conns:
            c.left = per_conn
            if per_conn:
                self._send(c)
                pending += 1
        done = 0
        last = time.monotonic()
        while pending:
            events = self.sel.select(timeout=1.0)
            if not events and time.monotonic() - last > _STALL_S:
                raise RuntimeFailure(f"no answer for {_STALL_S:g} s; the server stalled")
            for key, _ in events:
                c = key.data
                data = c.sock.recv(65536)
                if not data:
                    raise RuntimeFailure("the server closed a connection mid-run")
                c.buf += data
                if self._complete(c):
                    done += 1
                    last = time.monotonic()
                    c.left -= 1
                    if c.left:
                        self._send(c)
                    else:
                        pending -= 1
        return done


# --- callgrind ------------------------------------------------------------------------------


def callgrind_control(option: str, pid: int) -> None:
    out = subprocess.run(
        ["callgrind_control", option, str(pid)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0 or "OK" not in out.stdout:
        msg = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeFailure(f"callgrind_control {option} {pid} failed: {msg}")


def read_instructions(path: Path) -> tuple[int, int]:
    """Ir of one dump as (summary, totals).

    'summary:' is what was executed since the zero (an idle server shows a few
    hundred) and what callgrind_annotate reports as PROGRAM TOTALS; 'totals:'
    ran a few percent higher in mid-run dumps here (~60,000 on an idle
    server), so the per-request figure uses summary and totals is only kept.
    """
    found = {k: int(v) for k, v in _TOTALS.findall(path.read_bytes())}
    summary = found.get(b"summary", found.get(b"totals"))
    if summary is None:
        raise RuntimeFailure(f"no summary or totals line in {path}")
    return summary, found.get(b"totals", summary)


def _newest_dump(out_dir: Path, pid: int, before: set[Path]) -> Path:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [p for p in out_dir.glob(f"cg.{pid}.*") if p not in before and p.stat().st_size]
        if new:
            return max(new, key=lambda p: int(p.suffix.lstrip(".") or 0))
        time.sleep(0.1)
    raise RuntimeFailure("callgrind wrote no dump file")


@dataclass
class Measurement:
    server: str
    repeat: int
    ok: bool
    reason: str = ""
    requests: int = 0
    instructions: int = 0
    totals_line: int = 0
    instructions_per_request: float | None = None
    idle_instructions: int = 0
    seconds: float = 0.0


def measure(
    spec: ServerSpec,
    *,
    repeat: int,
    connections: int,
    size: int,
    requests: int,
    warmup_per_conn: int,
    server_cpu: int | None,
    load_cpus: Sequence[int],
    keep: Path | None = None,
) -> Measurement:
    """One server under callgrind: warm, zero, fixed load, dump, stop.

    With `keep`, the measured dump is copied there for callgrind_annotate.
    """
    m = Measurement(spec.name, repeat, ok=False)
    http = kind(spec.name) == "http"
    per_conn = max(1, requests // connections)
    out_dir = Path(tempfile.mkdtemp(prefix="muxio-callgrind-"))
    wrapped = ServerSpec(
        spec.name,
        (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=yes",
            f"--callgrind-out-file={out_dir}/cg.%p",
            *spec.argv,
        ),
        env=spec.env,
    )
    if load_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(load_cpus))
    started = time.monotonic()
    server: SpecProcess | None = None
    driver: Driver | None = None
    try:
        server = SpecProcess(wrapped, "127.0.0.1", server_cpu)
        port = server.wait_listening(timeout=180)
        driver = Driver(port, connections, size, http)
        driver.run(warmup_per_conn)
        before = set(out_dir.glob("cg.*"))
        # Counts what an idle server does between zero and dump: the control itself.
        callgrind_control("-z", server.pid)
        callgrind_control("-d", server.pid)
        idle_dump = _newest_dump(out_dir, server.pid, before)
        m.idle_instructions = read_instructions(idle_dump)[0]
        before = set(out_dir.glob("cg.*"))
        callgrind_control("-z", server.pid)
        m.requests = driver.run(per_conn)
        callgrind_control("-d", server.pid)
        dump = _newest_dump(out_dir, server.pid, before)
        m.instructions, m.totals_line = read_instructions(dump)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dump, keep / f"{spec.name}.{repeat + 1}.callgrind")
        if not server.alive():
            m.reason = f"server exited with code {server.proc.returncode}: {server.tail()}"
        else:
            m.ok = True
            m.instructions_per_request = round(m.instructions / m.requests, 1)
    except MuxioError as exc:
        m.reason = str(exc)
        if server is not None and not server.alive():
            m.reason += f" (server exited with code {server.proc.returncode}: {server.tail()})"
    finally:
        if driver is not None:
            driver.close()
        if server is not None:
            server.stop(timeout=60)
        shutil.rmtree(out_dir, ignore_errors=True)
        m.seconds = round(time.monotonic() - started, 1)
    return m


# --- report ---------------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    ok_runs: int
    runs: int
    requests: int
    instructions_per_request: float | None
    min: float | None
    max: float | None
    spread_pct: float | None
    vs_asyncio: float | None
    vs_uvloop: float | None
    asyncio_ref: str
    uvloop_ref: str


@dataclass
class Report:
    meta: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    runs: list[Measurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "rows": [asdict(r) for r in self.rows],
            "runs": [asdict(r) for r in self.runs],
        }


def aggregate(runs: Sequence[Measurement], names: Sequence[str]) -> list[Row]:
    med: dict[str, float] = {}
    rows = []
    for name in names:
        vals = [r.instructions_per_request for r in runs if r.server == name and r.ok]
        ipr = [v for v in vals if v is not None]
        if ipr:
            med[name] = statistics.median(ipr)
        asy, uv = REFERENCES[kind(name)]
        rows.append(
            Row(
                server=name,
                ok_runs=len(ipr),
                runs=sum(1 for r in runs if r.server == name),
                requests=max((r.requests for r in runs if r.server == name), default=0),
                instructions_per_request=round(med[name], 1) if ipr else None,
                min=min(ipr, default=None),
                max=max(ipr, default=None),
                spread_pct=round((max(ipr) - min(ipr)) / med[name] * 100, 2) if ipr else None,
                vs_asyncio=None,
                vs_uvloop=None,
                asyncio_ref=asy,
                uvloop_ref=uv,
            )
        )
    for row in rows:
        own = med.get(row.server)
        if own is not None:
            if row.asyncio_ref in med:
                row.vs_asyncio = round(own / med[row.asyncio_ref], 3)
            if row.uvloop_ref in med:
                row.vs_uvloop = round(own / med[row.uvloop_ref], 3)
    return rows


def render(report: Report) -> str:
    m = report.meta
    lines = [
        f"Python {m['python']} on {m['platform']}; {m['valgrind']} callgrind; echo: "
        f"{m['connections']} connections x {m['size']} B, {m['requests']} requests; HTTP: "
        f"{m['http_connections']} connections, {m['http_requests']} requests; median "
        f"(min-max) of {m['repeat']} run(s).",
        "",
        "| server | instructions/request | spread | vs asyncio's loop | vs uvloop | ok runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(v: float | None, ref: str) -> str:
        return "—" if v is None else f"{v:.3f}x ({ref})"

    for r in report.rows:
        ipr = (
            "—"
            if r.instructions_per_request is None or r.min is None or r.max is None
            else f"{r.instructions_per_request:,.0f} ({r.min:,.0f}-{r.max:,.0f})"
        )
        spread = "—" if r.spread_pct is None else f"{r.spread_pct:.2f} %"
        lines.append(
            f"| {r.server} | {ipr} | {spread} | {ratio(r.vs_asyncio, r.asyncio_ref)} "
            f"| {ratio(r.vs_uvloop, r.uvloop_ref)} | {r.ok_runs}/{r.runs} |"
        )
    for run in report.runs:
        if run.reason:
            lines.append(f"\n{run.server} run {run.repeat + 1}: {run.reason}")
    return "\n".join(lines) + "\n"


def select(text: str) -> list[ServerSpec]:
    known = known_servers()
    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        spec = known.get(name)
        if spec is None:
            raise UsageError(f"unknown server {name!r}; choose from {', '.join(known)}")
        if not spec.available:
            raise UsageError(f"{name} cannot run here: {spec.why_not}; drop it")
        out.append(spec)
    if not out:
        raise UsageError("--servers is empty; e.g. --servers asyncio-protocol,uvloop")
    return out


# Under callgrind a server runs ~50x slower, so each of its iterations would take longer than the
# loop's health floor (50 µs: iterations under it are only counted, not placed in a histogram slot)
# and take the slow path real runs take only for long iterations. The floor is raised in proportion.
HEALTH_FLOOR_UNDER_CALLGRIND_US = "2500"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUXIO_HEALTH_FLOOR_US", HEALTH_FLOOR_UNDER_CALLGRIND_US)
    p = argparse.ArgumentParser(description="Instructions per request under callgrind.")
    p.add_argument("--servers", default=DEFAULT_SERVERS, help="comma list (default %(default)s)")
    p.add_argument("--connections", type=int, default=100, help="echo connections (default 100)")
    p.add_argument("--size", type=int, default=1024, help="echo request bytes (default 1024)")
    p.add_argument("--requests", type=int, default=10000, help="echo requests (default 10000)")
    p.add_argument("--http-connections", type=int, default=50, help="HTTP connections (50)")
    p.add_argument("--http-requests", type=int, default=2000, help="HTTP requests (2000)")
    p.add_argument("--warmup", type=int, default=5, help="requests per connection first (5)")
    p.add_argument("--repeat", type=int, default=2, help="runs per server (default 2)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each measured dump to DIR/SERVER.RUN.callgrind",
    )
    args = p.parse_args(argv)

    def body() -> int:
        for flag in ("connections", "size", "requests", "http_connections", "http_requests"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
        if args.repeat < 1 or args.warmup < 0:
            raise UsageError("--repeat must be at least 1 and --warmup 0 or more")
        servers = select(args.servers)
        for tool in ("valgrind", "callgrind_control"):
            if shutil.which(tool) is None:
                raise RuntimeFailure(f"{tool} is not installed; apt-get install -y valgrind")
        if any(kind(s.name) == "http" for s in servers):
            import importlib.util

            if importlib.util.find_spec("aiohttp") is None:
                raise RuntimeFailure("aiohttp is not installed; pip install aiohttp")
        version = subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        server_cpu, load_cpus = cpu_plan()
        report = Report(
            meta={
                **machine(),
                "valgrind": version,
                "connections": args.connections,
                "size": args.size,
                "requests": args.connections * max(1, args.requests // args.connections),
                "http_connections": args.http_connections,
                "http_requests": args.http_connections
                * max(1, args.http_requests // args.http_connections),
                "warmup_per_connection": args.warmup,
                "repeat": args.repeat,
                "server_cpu": server_cpu,
                "load_cpus": load_cpus,
            }
        )
        for r in range(args.repeat):
            for spec in servers:
                http = kind(spec.name) == "http"
                m = measure(
                    spec,
                    repeat=r,
                    connections=args.http_connections if http else args.connections,
                    size=args.size,
                    requests=args.http_requests if http else args.requests,
                    warmup_per_conn=args.warmup,
                    server_cpu=server_cpu,
                    load_cpus=load_cpus,
                    keep=args.keep,
                )
                report.runs.append(m)
                print(
                    f"[{r + 1}/{args.repeat}] {spec.name}: "
                    + (
                        f"{m.instructions_per_request:,.1f} Ir/request ({m.requests} requests, "
                        f"idle control {m.idle_instructions:,} Ir, {m.seconds:g} s)"
                        if m.ok and m.instructions_per_request is not None
                        else f"FAILED: {m.reason}"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        report.rows = aggregate(report.runs, [s.name for s in servers])
        print(json.dumps(report.to_dict(), indent=2) if args.json else render(report), end="")
        if args.json:
            print()
        return 0 if all(r.ok_runs for r in report.rows) else 1

    return run_reporting(body)


if __name__ == "__main__":
    sys.exit(main())
