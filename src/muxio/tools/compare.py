"""Run muxio and other server designs side by side under identical load.

Requests per second alone flatter whichever server gets the most CPU, so the
headline number here is the server's CPU time per request, read from the OS
for the server's process tree over exactly the measured window. Each server
is a fresh subprocess pinned to one CPU, with the load generator on the
others; servers take turns within each workload and runs are repeated, so
drift in the machine hits every server alike and medians absorb the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from muxio.errors import MuxioError, RuntimeFailure, UsageError, run_reporting
from muxio.tools.bench import BenchHooks, Progress, TLSOptions, raise_fd_limit, run_bench

DEFAULT_WORKLOADS = "1x1024,10x1024,100x1024,1000x1024,100x65536,50x1024,50x1024+5000idle"
_LISTENING = re.compile(rb"listening on (\S+):(\d+)")
_WORKLOAD = re.compile(r"^(\d+)x(\d+)([kKmM]?)(?:\+(\d+)idle)?$")
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSpec:
    """A server as compare starts it; --host and --port are appended."""

    name: str
    argv: tuple[str, ...]
    available: bool = True
    why_not: str = ""


@dataclass(frozen=True)
class Workload:
    connections: int
    size: int
    idle: int = 0

    @property
    def name(self) -> str:
        return f"{self.connections}x{self.size}" + (f"+{self.idle}idle" if self.idle else "")


@dataclass
class RunRecord:
    """One server under one workload once; numbers are None when the run failed."""

    workload: str
    server: str
    repeat: int
    ok: bool
    reason: str = ""
    requests_per_s: float | None = None
    p99_ms: float | None = None
    cpu_seconds: float | None = None
    cpu_us_per_request: float | None = None
    peak_rss_mib: float | None = None
    server_exit: int | None = None
    bench: dict[str, Any] | None = None


@dataclass
class Row:
    """Medians over a workload's successful repeats for one server."""

    workload: str
    server: str
    runs: int
    ok_runs: int
    requests_per_s: float | None
    p99_ms: float | None
    cpu_us_per_request: float | None
    peak_rss_mib: float | None
    cpu_vs_reference: float | None = None
    rps_vs_reference: float | None = None
    status: str = "ok"


@dataclass
class CompareReport:
    meta: dict[str, Any]
    reference: str | None
    rows: list[Row] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "reference": self.reference,
            "rows": [asdict(r) for r in self.rows],
            "runs": [asdict(r) for r in self.runs],
        }


# --- servers --------------------------------------------------------------------------------


def _peer(module: str, *extra: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"muxio.tools.peers.{module}", *extra)


def _muxio_command() -> tuple[tuple[str, ...], str]:
    """How to start `muxio serve` here, or why it cannot be started."""
    try:
        if importlib.util.find_spec("muxio.__main__") is not None:
            return (sys.executable, "-m", "muxio"), ""
        if importlib.util.find_spec("muxio.cli") is not None:
            code = "import sys; from muxio.cli import main; sys.exit(main())"
            return (sys.executable, "-c", code), ""
    except ImportError:
        pass
    return (), "muxio's command line is not importable"


@dataclass(frozen=True)
class TLSFiles:
    """The certificate and key every server serves with under `--tls`."""

    cert: str
    key: str

    def argv(self) -> tuple[str, ...]:
        return ("--tls-cert", self.cert, "--tls-key", self.key)


_NO_TLS = {"naive-select", "threads"}


def _with_tls(spec: ServerSpec, tls: TLSFiles | None) -> ServerSpec:
    if tls is None:
        return spec
    if spec.name in _NO_TLS:
        return ServerSpec(spec.name, spec.argv, False, "it has no TLS (drop it, or drop --tls)")
    return ServerSpec(spec.name, (*spec.argv, *tls.argv()), spec.available, spec.why_not)


def make_tls_files(directory: str) -> TLSFiles:
    """A throwaway self-signed certificate for 127.0.0.1, made by the `openssl` program.

    The load generator does not verify it (`--insecure`): what is measured
    is the servers' cost, and they pay the same whatever the client trusts.
    """
    import shutil

    openssl = shutil.which("openssl")
    if openssl is None:
        raise UsageError(
            "--tls needs a certificate: give --tls-cert FILE and --tls-key FILE, or install "
            "the openssl program to make a throwaway one"
        )
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
             "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
            check=True, capture_output=True, timeout=60,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise RuntimeFailure(f"openssl could not make a throwaway certificate: {exc}") from None
    return TLSFiles(cert, key)


def all_servers(tls: TLSFiles | None = None) -> list[ServerSpec]:
    """Every server compare knows, marked with whether it can run on this machine."""
    return [_with_tls(s, tls) for s in _all_servers()]


def _all_servers() -> list[ServerSpec]:
    base, why = _muxio_command()
    specs = []
    for poller in ("epoll", "kqueue", "devpoll", "poll", "select"):
        present = hasattr(select, poller)
        specs.append(
            ServerSpec(
                f"muxio-{poller}",
                (*base, "serve", "--poller", poller),
                available=present and not why,
                why_not=why or ("" if present else f"this OS has no {poller}"),
            )
        )
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    specs += [
        ServerSpec("naive-select", _peer("naive_select")),
        ServerSpec("threads", _peer("threads")),
        ServerSpec("asyncio-protocol", _peer("asyncio_protocol")),
        ServerSpec("asyncio-streams", _peer("asyncio_streams")),
        ServerSpec("muxio-asyncio-protocol", _peer("asyncio_protocol", "--loop", "muxio")),
        ServerSpec("muxio-asyncio-streams", _peer("asyncio_streams", "--loop", "muxio")),
        ServerSpec("muxio-upper-streams", (*base, "serve", "--service", "upper-streams")),
    ]
    no_uvloop = "" if has_uvloop else "uvloop is not installed (pip install uvloop)"
    for name, peer in (("uvloop", "asyncio_protocol"), ("uvloop-streams", "asyncio_streams")):
        specs.append(
            ServerSpec(
                name, _peer(peer, "--loop", "uvloop"), available=has_uvloop, why_not=no_uvloop
            )
        )
    return specs


def available_servers() -> list[ServerSpec]:
    return [s for s in all_servers() if s.available]


def select_servers(text: str | None, tls: TLSFiles | None = None) -> list[ServerSpec]:
    known = {s.name: s for s in all_servers(tls)}
    if not text:
        return [s for s in known.values() if s.available]
    chosen = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        spec = known.get(name)
        if spec is None:
            names = ", ".join(s.name for s in known.values() if s.available)
            raise UsageError(f"unknown server {name!r} in --servers; choose from {names}")
        if not spec.available:
            raise UsageError(f"server {name} cannot run here: {spec.why_not}; drop it")
        if spec not in chosen:
            chosen.append(spec)
    if not chosen:
        raise UsageError("--servers is empty; name at least one, e.g. --servers threads")
    return chosen


def parse_workload(text: str) -> Workload:
    """Accept 'CONNxSIZE[k|m][+IDLEidle]', e.g. 100x1024, 100x64k, 50x1k+5000idle."""
    m = _WORKLOAD.match(text.strip())
    if not m:
        raise UsageError(
            f"cannot read workload {text!r}; write CONNxBYTES[+IDLEidle], e.g. 50x1024+5000idle"
        )
    unit = {"": 1, "k": 1024, "m": _MIB}[m.group(3).lower()]
    w = Workload(int(m.group(1)), int(m.group(2)) * unit, int(m.group(4) or 0))
    if w.connections < 1 or w.size < 1:
        raise UsageError(f"workload {text!r} needs at least 1 connection of at least 1 byte")
    return w


def parse_workloads(text: str) -> list[Workload]:
    items = [t for t in text.replace("default", DEFAULT_WORKLOADS).split(",") if t.strip()]
    if not items:
        raise UsageError("--workloads is empty; e.g. --workloads 10x1024,100x1024")
    out: list[Workload] = []
    for item in items:
        w = parse_workload(item)
        if w not in out:
            out.append(w)
    return out


def _child_env() -> dict[str, str]:
    """Make `python -m muxio...` work in the child even when muxio is not installed."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        env["PYTHONPATH"] = os.pathsep.join([src, *parts])
    return env


class ServerProcess:
    """A server subprocess that is always stopped: SIGTERM, then SIGKILL after a timeout."""

    def __init__(self, spec: ServerSpec, host: str, cpu: int | None) -> None:
        self.spec = spec
        self.host = host
        fd, self.log_path = tempfile.mkstemp(prefix=f"muxio-{spec.name}-", suffix=".log")
        try:
            self.proc = subprocess.Popen(
                [*spec.argv, "--host", host, "--port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=fd,
                env=_child_env(),
                start_new_session=True,
            )
        except OSError as exc:
            os.unlink(self.log_path)
            raise RuntimeFailure(f"cannot start {spec.name}: {exc}") from exc
        finally:
            os.close(fd)
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
        self.exit_code: int | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> bytes:
        try:
            return Path(self.log_path).read_bytes()
        except OSError:
            return b""

    def tail(self) -> str:
        lines = [ln for ln in self.log().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "no output"

    def wait_listening(self, timeout: float = _START_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while True:
            m = _LISTENING.search(self.log())
            if m:
                self.port = int(m.group(2))
                return self.port
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeFailure(f"{self.spec.name} exited with code {rc}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"{self.spec.name} did not report a port in {timeout:g} s")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    self.proc.kill()
                self.proc.wait(timeout)
        self.exit_code = self.proc.returncode
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
        return self.exit_code


@contextlib.contextmanager
def running(
    spec: ServerSpec, host: str = "127.0.0.1", cpu: int | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(spec, host, cpu)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


# --- measuring the server -------------------------------------------------------------------


class ProcessTree:
    """CPU seconds and resident memory of a process and its descendants.

    psutil when installed; otherwise /proc; otherwise None, reported as n/a.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ps: Any = None
        try:
            import psutil

            self._ps = psutil.Process(pid)
        except ImportError:
            pass
        except Exception:
            self._ps = None
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def _pids(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError, ValueError):
                    todo += [int(c) for c in task.read_text().split()]
        return pids

    def cpu_seconds(self) -> float | None:
        if self._ps is not None:
            try:
                t = self._ps.cpu_times()
                total = float(t.user + t.system + t.children_user + t.children_system)
                for child in self._ps.children(recursive=True):
                    with contextlib.suppress(Exception):
                        ct = child.cpu_times()
                        total += ct.user + ct.system
                return total
            except Exception:
                return None
        total_ticks = 0
        try:
            for i, pid in enumerate(self._pids()):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                # utime, stime; cutime and cstime (reaped children) only for the root.
                total_ticks += int(fields[11]) + int(fields[12])
                if i == 0:
                    total_ticks += int(fields[13]) + int(fields[14])
        except (OSError, ValueError, IndexError):
            return None
        return total_ticks / self._ticks

    def rss_bytes(self) -> int | None:
        if self._ps is not None:
            try:
                total = int(self._ps.memory_info().rss)
                for child in self._ps.children(recursive=True):
                    with contextlib.suppress(Exception):
                        total += int(child.memory_info().rss)
                return total
            except Exception:
                return None
        total = 0
        try:
            for pid in self._pids():
                total += self._status_kib(pid, "VmRSS") * 1024
        except (OSError, ValueError):
            return None
        return total

    def peak_rss_bytes(self) -> int | None:
        """The kernel's own high-water mark, which catches peaks between samples."""
        try:
            return self._status_kib(self.pid, "VmHWM") * 1024
        except (OSError, ValueError):
            return None

    @staticmethod
    def _status_kib(pid: int, key: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise ValueError(key)


class _Sampler(BenchHooks):
    def __init__(self, tree: ProcessTree) -> None:
        self.tree = tree
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self.peak_rss = 0

    def _rss(self) -> None:
        rss = self.tree.rss_bytes()
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)

    def window_start(self) -> None:
        self.cpu_start = self.tree.cpu_seconds()
        self._rss()

    def tick(self, progress: Progress) -> None:
        if progress.phase == "measure":
            self._rss()

    def window_end(self) -> None:
        self.cpu_end = self.tree.cpu_seconds()
        self._rss()
        hwm = self.tree.peak_rss_bytes()
        if hwm is not None:
            self.peak_rss = max(self.peak_rss, hwm)

    @property
    def cpu(self) -> float | None:
        if self.cpu_start is None or self.cpu_end is None:
            return None
        return self.cpu_end - self.cpu_start


# --- running --------------------------------------------------------------------------------


def cpu_plan() -> tuple[int | None, list[int]]:
    """Server on the first allowed CPU, load on the rest; no pinning with one CPU."""
    if not hasattr(os, "sched_getaffinity"):
        return None, []
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, []
    return allowed[0], allowed[1:]


def _describe_errors(bench: dict[str, Any]) -> str:
    errs = bench["errors"]
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in errs.items() if k != "total" and v]
    return f"{errs['total']} errors ({', '.join(parts)})"


def run_once(
    spec: ServerSpec,
    workload: Workload,
    *,
    repeat: int = 0,
    duration: float = 3.0,
    warmup: float = 1.0,
    processes: int | None = None,
    host: str = "127.0.0.1",
    server_cpu: int | None = None,
    load_cpus: Sequence[int] = (),
    tls: bool = False,
) -> RunRecord:
    """Start a fresh server, load it, stop it; failures become a record, not an exception."""
    rec = RunRecord(workload.name, spec.name, repeat, ok=False)
    try:
        server = ServerProcess(spec, host, server_cpu)
    except RuntimeFailure as exc:
        rec.reason = str(exc)
        return rec
    try:
        server.wait_listening()
        sampler = _Sampler(ProcessTree(server.pid))
        result = run_bench(
            host,
            server.port,
            connections=workload.connections,
            size=workload.size,
            idle=workload.idle,
            duration=duration,
            warmup=warmup,
            processes=processes,
            cpus=load_cpus or None,
            hooks=sampler,
            tls=TLSOptions(insecure=True) if tls else None,
        )
        rec.bench = result.to_dict()
        died = not server.alive()
        if died:
            rec.reason = f"server exited with code {server.proc.returncode}: {server.tail()}"
        elif result.errors.total:
            rec.reason = _describe_errors(rec.bench)
        elif result.requests == 0:
            rec.reason = "no request completed"
        else:
            rec.ok = True
            rec.requests_per_s = result.requests_per_s
            rec.p99_ms = result.latency_ms.p99
            cpu = sampler.cpu
            if cpu is not None:
                rec.cpu_seconds = round(cpu, 4)
                rec.cpu_us_per_request = round(cpu / result.requests * 1e6, 3)
            rec.peak_rss_mib = round(sampler.peak_rss / _MIB, 2) if sampler.peak_rss else None
    except MuxioError as exc:
        rec.reason = str(exc)
        if not server.alive():
            rec.reason = f"server exited with code {server.proc.returncode}: {server.tail()}"
    finally:
        rec.server_exit = server.stop()
    return rec


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def pick_reference(servers: Sequence[ServerSpec]) -> str | None:
    names = [s.name for s in servers]
    for preferred in ("uvloop", "asyncio-protocol"):
        if preferred in names:
            return preferred
    return names[0] if names else None


def aggregate(
    runs: Sequence[RunRecord],
    servers: Sequence[ServerSpec],
    workloads: Sequence[Workload],
    reference: str | None,
) -> list[Row]:
    rows: list[Row] = []
    for w in workloads:
        block: list[Row] = []
        for s in servers:
            mine = [r for r in runs if r.workload == w.name and r.server == s.name]
            if not mine:
                continue
            good = [r for r in mine if r.ok]
            row = Row(
                w.name,
                s.name,
                runs=len(mine),
                ok_runs=len(good),
                requests_per_s=_median([r.requests_per_s for r in good]),
                p99_ms=_median([r.p99_ms for r in good]),
                cpu_us_per_request=_median([r.cpu_us_per_request for r in good]),
                peak_rss_mib=_median([r.peak_rss_mib for r in good]),
            )
            failed = [r for r in mine if not r.ok]
            if failed and not good:
                row.status = f"failed: {failed[0].reason}"
            elif failed:
                row.status = f"{len(good)}/{len(mine)} ok; failed: {failed[0].reason}"
            block.append(row)
        ref = next((r for r in block if r.server == reference and r.ok_runs), None)
        for row in block:
            if ref is not None and row.ok_runs:
                row.cpu_vs_reference = _ratio(row.cpu_us_per_request, ref.cpu_us_per_request)
                row.rps_vs_reference = _ratio(row.requests_per_s, ref.requests_per_s)
        rows += block
    return rows


def run_compare(
    servers: Sequence[ServerSpec],
    workloads: Sequence[Workload],
    *,
    duration: float = 3.0,
    warmup: float = 1.0,
    repeat: int = 3,
    processes: int | None = None,
    host: str = "127.0.0.1",
    log: Callable[[str], None] | None = None,
    tls: bool = False,
) -> CompareReport:
    """Every server under every workload, `repeat` times; Ctrl-C returns what was measured."""
    if repeat < 1:
        raise UsageError(f"--repeat {repeat} must be at least 1")
    if not duration > 0 or warmup < 0:
        raise UsageError("--duration must be positive and --warmup 0 or more")
    if not servers or not workloads:
        raise UsageError("nothing to compare: give at least one server and one workload")
    say = log or (lambda _msg: None)
    raise_fd_limit()
    server_cpu, load_cpus = cpu_plan()
    # Two workers even on one spare CPU: one works while the other waits on a wakeup.
    procs = processes or (max(2, min(4, len(load_cpus))) if load_cpus else None)
    reference = pick_reference(servers)
    report = CompareReport(
        meta={
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "server_cpu": server_cpu,
            "load_cpus": load_cpus,
            "load_processes": procs,
            "duration": duration,
            "warmup": warmup,
            "repeat": repeat,
            "servers": [s.name for s in servers],
            "workloads": [w.name for w in workloads],
            "cpu_source": _cpu_source(),
            "interrupted": False,
            "tls": tls,
        },
        reference=reference,
    )
    total = len(servers) * len(workloads) * repeat
    n = 0
    try:
        for w in workloads:
            for r in range(repeat):
                for s in servers:
                    n += 1
                    rec = run_once(
                        s,
                        w,
                        repeat=r,
                        duration=duration,
                        warmup=warmup,
                        processes=procs,
                        host=host,
                        server_cpu=server_cpu,
                        load_cpus=load_cpus,
                        tls=tls,
                    )
                    report.runs.append(rec)
                    say(f"[{n}/{total}] {w.name} {s.name} #{r + 1}: {_run_line(rec)}")
    except KeyboardInterrupt:
        report.meta["interrupted"] = True
    report.rows = aggregate(report.runs, servers, workloads, reference)
    return report


def _cpu_source() -> str:
    if importlib.util.find_spec("psutil") is not None:
        return "psutil"
    return "/proc" if Path("/proc/self/stat").exists() else "unavailable"


def _run_line(rec: RunRecord) -> str:
    if not rec.ok:
        return f"FAILED: {rec.reason}"
    cpu = f"{rec.cpu_us_per_request:.1f} µs/req" if rec.cpu_us_per_request is not None else "n/a"
    return f"{rec.requests_per_s:,.0f} req/s, p99 {rec.p99_ms:.2f} ms, CPU {cpu}"


# --- reporting ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def render_markdown(report: CompareReport) -> str:
    m = report.meta
    ref = report.reference or "reference"
    pin = (
        f"server pinned to CPU {m['server_cpu']}, load generator ({m['load_processes']} "
        f"process(es)) on CPU {','.join(map(str, m['load_cpus']))}"
        if m["server_cpu"] is not None
        else "no CPU pinning (one CPU available)"
    )
    lines = [
        f"Python {m['python']} on {m['platform']}; {pin}.",
        f"{m['duration']:g} s measured after {m['warmup']:g} s warmup, median of "
        f"{m['repeat']} run(s); server CPU time from {m['cpu_source']}.",
        "",
        f"| workload | server | req/s | p99 ms | CPU µs/req | CPU/req vs {ref} "
        f"| req/s vs {ref} | peak RSS MiB | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.rows:
        status = r.status.replace("|", "/")
        lines.append(
            f"| {r.workload} | {r.server} | {_fmt(r.requests_per_s, ',.0f')} "
            f"| {_fmt(r.p99_ms, '.2f')} | {_fmt(r.cpu_us_per_request, '.1f')} "
            f"| {_fmt(r.cpu_vs_reference, '.2f', 'x')} | {_fmt(r.rps_vs_reference, '.2f', 'x')} "
            f"| {_fmt(r.peak_rss_mib, '.1f')} | {status} |"
        )
    if m.get("interrupted"):
        lines += ["", "Interrupted: the table holds only the runs that finished."]
    return "\n".join(lines) + "\n"


def plot_png(report: CompareReport, path: Path) -> str | None:
    """Draw the 1 KiB scaling curves; returns why not when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no compare.png"
    scaling = [
        parse_workload(name)
        for name in report.meta["workloads"]
        if parse_workload(name).size == 1024 and parse_workload(name).idle == 0
    ]
    if not scaling:
        return "no 1 KiB workload without idle connections to plot; no compare.png"
    scaling.sort(key=lambda w: w.connections)
    fig, (ax_rps, ax_cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    for server in report.meta["servers"]:
        xs, rps, cpu = [], [], []
        for w in scaling:
            row = next(
                (r for r in report.rows if r.workload == w.name and r.server == server), None
            )
            if row is None or not row.ok_runs:
                continue
            xs.append(w.connections)
            rps.append(row.requests_per_s)
            cpu.append(row.cpu_us_per_request)
        if xs:
            ax_rps.plot(xs, rps, marker="o", label=server)
            ax_cpu.plot(xs, cpu, marker="o", label=server)
    for ax, title in (
        (ax_rps, "requests/s (higher is better)"),
        (ax_cpu, "server CPU µs per request (lower is better)"),
    ):
        ax.set_xscale("log")
        ax.set_xticks([w.connections for w in scaling], [str(w.connections) for w in scaling])
        ax.minorticks_off()
        ax.set_xlabel("connections (1 KiB requests)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    ax_cpu.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(report: CompareReport, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write compare.md, compare.json and compare.png; returns the files and any notes."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --out {out_dir}: {exc.strerror}; pick another") from exc
    md, js, png = out_dir / "compare.md", out_dir / "compare.json", out_dir / "compare.png"
    md.write_text(render_markdown(report), encoding="utf-8")
    js.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    written = [md, js]
    notes = []
    why_not = plot_png(report, png)
    if why_not:
        notes.append(why_not)
    else:
        written.append(png)
    return written, notes


# --- command line ---------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    names = ", ".join(s.name for s in available_servers())
    p.add_argument("--servers", help=f"comma list (default all available here: {names})")
    p.add_argument(
        "--workloads",
        default=DEFAULT_WORKLOADS,
        help="comma list of CONNxBYTES[+IDLEidle] (default %(default)s)",
    )
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; medians reported (default 3)")
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


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="muxio-compare-") as scratch:
        return _main(args, scratch)


def _main(args: argparse.Namespace, scratch: str) -> int:
    tls = None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: the certificate and its key")
    if args.tls_cert is not None and not args.tls:
        raise UsageError("--tls-cert and --tls-key apply with --tls only")
    if args.tls:
        from muxio.cli import server_tls

        if args.tls_cert is None:
            tls = make_tls_files(scratch)
        else:
            tls = TLSFiles(args.tls_cert, args.tls_key)
        # the same checks, the same one-line errors as `muxio serve`
        server_tls(
            argparse.Namespace(
                tls_cert=tls.cert, tls_key=tls.key, tls_client_ca=None,
                tls_key_password_file=None,
            )
        )
    servers = select_servers(args.servers, tls)
    workloads = parse_workloads(args.workloads)
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat} must be at least 1")
    if args.processes is not None and args.processes < 1:
        raise UsageError(f"--processes {args.processes} must be at least 1")
    runs = len(servers) * len(workloads) * args.repeat
    estimate = runs * (args.duration + args.warmup + 1.0)
    print(
        f"muxio compare: {len(servers)} servers x {len(workloads)} workloads x {args.repeat} "
        f"= {runs} runs, about {estimate / 60:.1f} min",
        file=sys.stderr,
        flush=True,
    )
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
        written, notes = write_outputs(report, args.out)
        for note in notes:
            print(f"muxio compare: {note}", file=sys.stderr)
        print(f"muxio compare: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 130 if report.meta["interrupted"] else 0


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="muxio compare", description=__doc__)
    configure_parser(parser)
    return run_reporting(lambda: main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(_standalone())
