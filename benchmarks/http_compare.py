"""aiohttp's hello world on asyncio's loop, uvloop and muxio's loop, driven by wrk.

What a framework user gains from a loop is the framework's cost plus the
loop's, so this measures whole requests through aiohttp rather than the
loop alone. Like `muxio compare`, the number that matters is the server's CPU
time per request over the measured run only (requests/s flatters whichever
server gets the most CPU): each server is a fresh process pinned to one CPU,
wrk is pinned to the others, servers take turns in a rotating order within
each round, and rounds are repeated, because CPU time per request drifts by
15-25 % between server processes on this kind of machine.

    python benchmarks/http_compare.py [--servers aiohttp-asyncio,aiohttp-muxio]
        [--repeat 5] [--duration 5] [--warmup 1] [--connections 50] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from muxio.cmdline import run_reporting
from muxio.errors import MuxioError, RuntimeFailure, UsageError
from muxio.tools.compare import ProcessTree, ServerSpec, SpecProcess, cpu_plan, machine

REFERENCE = "aiohttp-asyncio"
_MARK = "WRKJSON "
# wrk's own summary is for humans; done() hands the exact counts to us instead.
_WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    "WRKJSON ", summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""
_LOOPS = ("asyncio", "uvloop", "muxio")


def http_servers() -> list[ServerSpec]:
    """The aiohttp app on every loop; shared with callgrind_per_request.py."""
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    module = "muxio.tools.peers.aiohttp_hello"
    return [
        ServerSpec(
            f"aiohttp-{loop}",
            (sys.executable, "-m", module, "--loop", loop),
            available=loop != "uvloop" or has_uvloop,
            why_not="" if loop != "uvloop" or has_uvloop else "uvloop is not installed",
        )
        for loop in _LOOPS
    ]


def check_tools() -> str:
    """wrk's path; a RuntimeFailure naming the fix when wrk or aiohttp is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeFailure("wrk is not installed; apt-get install -y wrk")
    if importlib.util.find_spec("aiohttp") is None:
        raise RuntimeFailure("aiohttp is not installed; pip install aiohttp")
    return wrk


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    error_detail: dict[str, int]


def parse_wrk(stdout: str) -> WrkResult:
    """Read the line our done() script printed; RuntimeFailure when it is absent."""
    for line in stdout.splitlines():
        if line.startswith(_MARK):
            d = json.loads(line[len(_MARK) :])
            detail = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout")}
            return WrkResult(
                requests=int(d["requests"]),
                duration_s=d["duration_us"] / 1e6,
                errors=sum(detail.values()),
                p50_ms=d["p50_us"] / 1e3,
                p99_ms=d["p99_us"] / 1e3,
                error_detail=detail,
            )
    tail = stdout.strip().splitlines()[-1:] or ["no output"]
    raise RuntimeFailure(f"wrk printed no result: {tail[0]}")


def _pin(cpus: Sequence[int]) -> Callable[[], None] | None:
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    wanted = set(cpus)
    return lambda: os.sched_setaffinity(0, wanted)


def run_wrk(
    wrk: str,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    cpus: Sequence[int] = (),
    timeout_s: float | None = None,
) -> WrkResult:
    """One wrk run pinned to `cpus` (set before exec so every wrk thread inherits it)."""
    fd, script = tempfile.mkstemp(prefix="muxio-wrk-", suffix=".lua")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_WRK_LUA)
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(2, round(timeout_s or 2 * duration))}s",
            "-s",
            script,
            url,
        ]
        try:
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=duration * 3 + 30,
                preexec_fn=_pin(cpus),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeFailure(f"wrk did not finish in {exc.timeout:g} s") from exc
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeFailure(f"wrk exited with code {out.returncode}: {err}")
        return parse_wrk(out.stdout)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(script)


@dataclass
class Run:
    server: str
    repeat: int
    ok: bool
    reason: str = ""
    requests: int = 0
    requests_per_s: float | None = None
    cpu_us_per_request: float | None = None
    p99_ms: float | None = None
    errors: int = 0


@dataclass
class Row:
    server: str
    ok_runs: int
    runs: int
    requests_per_s: float | None
    rps_min: float | None
    rps_max: float | None
    cpu_us_per_request: float | None
    cpu_min: float | None
    cpu_max: float | None
    cpu_vs_reference: float | None
    paired_ratio_min: float | None
    paired_ratio_max: float | None
    errors: int


@dataclass
class Report:
    meta: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "rows": [asdict(r) for r in self.rows],
            "runs": [asdict(r) for r in self.runs],
        }


def measure_once(
    spec: ServerSpec,
    wrk: str,
    *,
    repeat: int,
    duration: float,
    warmup: float,
    connections: int,
    server_cpu: int | None,
    load_cpus: Sequence[int],
) -> Run:
    """Fresh server, warm it, one measured wrk run; failures become a record."""
    run = Run(spec.name, repeat, ok=False)
    try:
        server = SpecProcess(spec, "127.0.0.1", server_cpu)
    except MuxioError as exc:
        run.reason = str(exc)
        return run
    try:
        port = server.wait_listening()
        url = f"http://127.0.0.1:{port}/"
        threads = max(1, len(load_cpus))
        if warmup > 0:
            run_wrk(
                wrk, url, duration=warmup, connections=connections, threads=threads, cpus=load_cpus
            )
        tree = ProcessTree(server.pid)
        before = tree.cpu_seconds()
        res = run_wrk(
            wrk, url, duration=duration, connections=connections, threads=threads, cpus=load_cpus
        )
        after = tree.cpu_seconds()
        run.requests, run.errors, run.p99_ms = res.requests, res.errors, round(res.p99_ms, 3)
        if not server.alive():
            run.reason = f"server exited with code {server.proc.returncode}: {server.tail()}"
        elif res.requests == 0:
            run.reason = "no request completed"
        else:
            run.ok = True
            run.requests_per_s = round(res.requests / res.duration_s, 1)
            if before is not None and after is not None:
                run.cpu_us_per_request = round((after - before) / res.requests * 1e6, 2)
            if res.errors:
                bad = ", ".join(f"{k} {v}" for k, v in res.error_detail.items() if v)
                run.reason = f"{res.errors} errors ({bad})"
    except MuxioError as exc:
        run.reason = str(exc)
    finally:
        server.stop()
    return run


def _med(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def aggregate(runs: Sequence[Run], names: Sequence[str], reference: str) -> list[Row]:
    """Medians with min-max; the ratio range pairs servers within the same round."""
    ref_cpu = {
        r.repeat: r.cpu_us_per_request
        for r in runs
        if r.server == reference and r.ok and r.cpu_us_per_request
    }
    rows = []
    for name in names:
        mine = [r for r in runs if r.server == name]
        good = [r for r in mine if r.ok]
        rps = [r.requests_per_s for r in good if r.requests_per_s is not None]
        cpu = [r.cpu_us_per_request for r in good if r.cpu_us_per_request is not None]
        paired = [
            r.cpu_us_per_request / ref_cpu[r.repeat]
            for r in good
            if r.cpu_us_per_request is not None and ref_cpu.get(r.repeat)
        ]
        ref_row = [v for v in ref_cpu.values() if v is not None]
        ref_med = statistics.median(ref_row) if ref_row else None
        med = _med(cpu)
        rows.append(
            Row(
                server=name,
                ok_runs=len(good),
                runs=len(mine),
                requests_per_s=_med(rps),
                rps_min=min(rps, default=None),
                rps_max=max(rps, default=None),
                cpu_us_per_request=med,
                cpu_min=min(cpu, default=None),
                cpu_max=max(cpu, default=None),
                cpu_vs_reference=round(med / ref_med, 3) if med and ref_med else None,
                paired_ratio_min=round(min(paired), 3) if paired else None,
                paired_ratio_max=round(max(paired), 3) if paired else None,
                errors=sum(r.errors for r in mine),
            )
        )
    return rows


def _span(med: float | None, lo: float | None, hi: float | None, spec: str) -> str:
    if med is None or lo is None or hi is None:
        return "—"
    return f"{med:{spec}} ({lo:{spec}}-{hi:{spec}})"


def render(report: Report) -> str:
    m = report.meta
    lines = [
        f"Python {m['python']} on {m['platform']}; server on CPU {m['server_cpu']}, "
        f"wrk -t{m['wrk_threads']} -c{m['connections']} -d{m['duration']:g}s on CPU(s) "
        f"{m['load_cpus']}; {m['warmup']:g} s warmup; median (min-max) of {m['repeat']} "
        "interleaved round(s).",
        "",
        f"| server | req/s | server CPU µs/req | CPU/req vs {m['reference']} "
        "(paired range) | errors | ok runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        ratio = "—"
        if r.cpu_vs_reference is not None:
            ratio = f"{r.cpu_vs_reference:.2f}x"
            if r.paired_ratio_min is not None and r.paired_ratio_max is not None:
                ratio += f" ({r.paired_ratio_min:.2f}-{r.paired_ratio_max:.2f})"
        lines.append(
            f"| {r.server} | {_span(r.requests_per_s, r.rps_min, r.rps_max, ',.0f')} "
            f"| {_span(r.cpu_us_per_request, r.cpu_min, r.cpu_max, '.1f')} | {ratio} "
            f"| {r.errors} | {r.ok_runs}/{r.runs} |"
        )
    for run in report.runs:
        if run.reason:
            lines.append(f"\n{run.server} round {run.repeat + 1}: {run.reason}")
    return "\n".join(lines) + "\n"


def select(text: str | None) -> list[ServerSpec]:
    known = {s.name: s for s in http_servers()}
    if not text:
        return [s for s in known.values() if s.available]
    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        if name not in known:
            raise UsageError(f"unknown server {name!r}; choose from {', '.join(known)}")
        if not known[name].available:
            raise UsageError(f"{name} cannot run here: {known[name].why_not}")
        out.append(known[name])
    if not out:
        raise UsageError("--servers is empty; e.g. --servers aiohttp-asyncio,aiohttp-muxio")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="aiohttp hello world on asyncio, uvloop and muxio loops, under wrk."
    )
    names = ", ".join(s.name for s in http_servers())
    p.add_argument("--servers", help=f"comma list (default all available: {names})")
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds (default 1)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = p.parse_args(argv)

    def body() -> int:
        if args.repeat < 1 or args.connections < 1 or args.duration < 1 or args.warmup < 0:
            raise UsageError("--repeat, --connections and --duration (s) must be >= 1")
        servers = select(args.servers)
        wrk = check_tools()
        server_cpu, load_cpus = cpu_plan()
        report = Report(
            meta={
                **machine(),
                "server_cpu": server_cpu,
                "load_cpus": load_cpus,
                "wrk_threads": max(1, len(load_cpus)),
                "connections": args.connections,
                "duration": args.duration,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "reference": REFERENCE,
            }
        )
        for r in range(args.repeat):
            k = r % len(servers)
            for spec in servers[k:] + servers[:k]:
                run = measure_once(
                    spec,
                    wrk,
                    repeat=r,
                    duration=args.duration,
                    warmup=args.warmup,
                    connections=args.connections,
                    server_cpu=server_cpu,
                    load_cpus=load_cpus,
                )
                report.runs.append(run)
                cpu = run.cpu_us_per_request
                print(
                    f"[{r + 1}/{args.repeat}] {spec.name}: "
                    + (
                        f"{run.requests_per_s:,.0f} req/s, {cpu} µs/req, {run.errors} errors"
                        if run.ok
                        else f"FAILED: {run.reason}"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        report.rows = aggregate(report.runs, [s.name for s in servers], REFERENCE)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(render(report), end="")
        return 0 if all(r.ok_runs for r in report.rows) else 1

    return run_reporting(body)


if __name__ == "__main__":
    sys.exit(main())
