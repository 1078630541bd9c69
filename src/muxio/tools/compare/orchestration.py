"""Running the comparison: a fresh server per run, turns within a workload, repeats.

Each server is a fresh subprocess pinned to one CPU, with the load generator
on the others; servers take turns within each workload and every round is
repeated, so drift in the machine hits every server alike and the spread over
repeats shows what is left.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

from muxio.errors import MuxioError, UsageError
from muxio.tools.bench import TLSOptions, raise_fd_limit, run_bench

from .metrics import CompareReport, RunRecord, aggregate, pick_reference
from .sampling import ProcessTree, Sampler, cpu_source
from .servers import ServerSpec, SpecProcess
from .workloads import Workload

STARTUP_SECONDS = 1.0
"""What a run costs beyond warmup and measurement: start, load workers, stop; for the plan."""
_MIB = 1024 * 1024


def machine() -> dict[str, Any]:
    """What every report says about where it was measured: numbers mean little without it."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def cpu_plan() -> tuple[int | None, list[int]]:
    """Server on the first allowed CPU, load on the rest; no pinning with one CPU."""
    if not hasattr(os, "sched_getaffinity"):
        return None, []
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, []
    return allowed[0], allowed[1:]


def check_run_settings(
    *, duration: float, warmup: float, repeat: int, processes: int | None = None
) -> None:
    """Refuse settings no run could use, before any server starts."""
    if not (math.isfinite(duration) and duration > 0):
        raise UsageError(f"duration {duration:g} must be a positive number of seconds")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise UsageError(f"warmup {warmup:g} must be 0 or more seconds")
    if repeat < 1:
        raise UsageError(f"repeat {repeat} must be at least 1")
    if processes is not None and processes < 1:
        raise UsageError(f"processes {processes} must be at least 1")


def expected_seconds(runs: int, duration: float, warmup: float) -> float:
    """How long `runs` runs take: each measures, warms up, and starts and stops a server."""
    return runs * (duration + warmup + STARTUP_SECONDS)


def _describe_errors(bench: dict[str, Any]) -> str:
    errs = bench["errors"]
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in errs.items() if k != "total" and v]
    return f"{errs['total']} errors ({', '.join(parts)})"


def _died(server: SpecProcess) -> str:
    return f"server exited with code {server.proc.returncode}: {server.tail(1)}"


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
        server = SpecProcess(spec, host, server_cpu)
    except MuxioError as exc:
        rec.reason = str(exc)
        return rec
    try:
        server.wait_listening()
        sampler = Sampler(ProcessTree(server.pid))
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
        if not server.alive():
            rec.reason = _died(server)
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
        rec.reason = _died(server) if not server.alive() else str(exc)
    finally:
        rec.server_exit = server.stop()
    return rec


def run_line(rec: RunRecord) -> str:
    """One run as the progress log shows it."""
    if not rec.ok:
        return f"FAILED: {rec.reason}"
    cpu = f"{rec.cpu_us_per_request:.1f} µs/req" if rec.cpu_us_per_request is not None else "n/a"
    return f"{rec.requests_per_s:,.0f} req/s, p99 {rec.p99_ms:.2f} ms, CPU {cpu}"


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
    check_run_settings(duration=duration, warmup=warmup, repeat=repeat, processes=processes)
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
            **machine(),
            "server_cpu": server_cpu,
            "load_cpus": load_cpus,
            "load_processes": procs,
            "duration": duration,
            "warmup": warmup,
            "repeat": repeat,
            "servers": [s.name for s in servers],
            "workloads": [w.name for w in workloads],
            "cpu_source": cpu_source(),
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
                    say(f"[{n}/{total}] {w.name} {s.name} #{r + 1}: {run_line(rec)}")
    except KeyboardInterrupt:
        report.meta["interrupted"] = True
    report.rows = aggregate(report.runs, servers, workloads, reference)
    return report
