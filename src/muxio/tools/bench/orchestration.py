"""`run_bench`: check the settings, reach the server once, run the workers, add up their results.

Nothing starts before every setting is checked and one probe connection got
through, so a mistake or a dead server costs one line, not N identical
failures; and no worker process outlives the call, whatever happens.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import socket
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from muxio.errors import RuntimeFailure, UsageError

from ...histogram import merge
from .config import PROTOCOLS, BadSetting, Check, TLSOptions, WorkerConfig
from .metrics import BenchResult, ErrorCounts, Progress, summarize
from .worker import PROGRESS_EVERY, raise_fd_limit, run_worker

_RESULT_GRACE = 15.0
MAX_PIPELINE = 10_000
MAX_RATE = 1_000_000.0


class BenchHooks:
    """Callbacks around the measured window, so callers can sample the server exactly then."""

    def window_start(self) -> None:
        """Called as warmup ends (or as the run ends, if it failed before)."""

    def window_end(self) -> None:
        """Called as the measured window ends, before results are collected."""

    def tick(self, progress: Progress) -> None:
        """Called about every quarter second from the go signal to the end of the window."""


def default_processes() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _need(ok: bool, parameter: str, value: object, problem: str) -> None:
    if not ok:
        raise BadSetting(parameter, value, problem)


def _check_settings(
    *,
    connections: int,
    size: int,
    duration: float,
    warmup: float,
    idle: int,
    processes: int,
    stall_timeout: float,
    protocol: str,
    requests: Sequence[bytes] | None,
    check: Check | None,
    pipeline: int,
    rate: float | None,
) -> None:
    """Every argument on its own; `not 0 < x <= limit` also rejects nan."""
    _need(connections >= 1, "connections", connections, "must be at least 1")
    _need(size >= 1, "size", size, "must be at least 1 byte")
    _need(0 < duration <= 86_400, "duration", duration, "must be more than 0 and at most 86400 s")
    _need(0 <= warmup <= 3_600, "warmup", warmup, "must be from 0 to 3600 s")
    _need(idle >= 0, "idle", idle, "must be 0 or more")
    _need(processes >= 1, "processes", processes, "must be at least 1")
    _need(
        0 < stall_timeout <= 86_400,
        "stall_timeout",
        stall_timeout,
        "must be more than 0 and at most 86400 s",
    )
    _need(protocol in PROTOCOLS, "protocol", protocol, f"must be one of {', '.join(PROTOCOLS)}")
    _need(1 <= pipeline <= MAX_PIPELINE, "pipeline", pipeline, f"must be 1 to {MAX_PIPELINE}")
    if rate is not None:
        _need(
            0 < rate <= MAX_RATE and math.isfinite(rate),
            "rate",
            rate,
            f"must be more than 0 and at most {MAX_RATE:.0f} requests/s per connection",
        )
    if protocol != "line":
        _need(requests is None, "requests", requests, "applies to the line protocol only")
        _need(check is None, "check", check, "applies to the line protocol only")
    if requests is not None:
        _need(len(requests) > 0, "requests", requests, "needs at least one line")
        for line in requests:
            _need(
                isinstance(line, bytes) and b"\n" not in line,
                "requests",
                line,
                "each request is bytes without a newline (the newline is added)",
            )
    if check is not None:
        _need(callable(check), "check", check, "must be a function check(request, reply)")


def _resolve(host: str, port: int, unix: str | None) -> tuple[int, Any, str]:
    if unix:
        if not hasattr(socket, "AF_UNIX"):
            raise BadSetting("unix", unix, "Unix sockets are not supported on this OS")
        return socket.AF_UNIX, unix, f"unix:{unix}"
    _need(0 < port < 65536, "port", port, "is out of range; use 1-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadSetting("host", host, f"cannot resolve it ({exc.strerror})") from exc
    family, _t, _p, _c, addr = infos[0]
    return family, addr, f"{host}:{port}"


def _preflight(
    family: int, address: Any, target: str, timeout: float, tls: TLSOptions | None = None
) -> None:
    """Fail fast with one clear line instead of N identical connect failures."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        s.close()
        raise RuntimeFailure(
            f"cannot connect to {target}: {reason}; is the server running there?"
        ) from exc
    if tls is None:
        s.close()
        return
    from ..client import start_tls

    start_tls(s, tls.context(), tls.server_name, target, timeout).close()


def _context() -> Any:
    """fork is fastest, but only safe while this process has no other threads."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_bench(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    unix: str | None = None,
    connections: int = 50,
    size: int = 1024,
    duration: float = 5.0,
    warmup: float = 1.0,
    idle: int = 0,
    processes: int | None = None,
    stall_timeout: float = 5.0,
    connect_timeout: float = 5.0,
    cpus: Sequence[int] | None = None,
    hooks: BenchHooks | None = None,
    tls: TLSOptions | None = None,
    reconnect: bool = False,
    protocol: str = "echo",
    requests: Sequence[bytes] | None = None,
    check: Check | None = None,
    pipeline: int = 1,
    rate: float | None = None,
    allow_lost: bool = False,
) -> BenchResult:
    """Drive the server at host:port (or `unix`) and return what was measured.

    `protocol` "echo" sends `size`-byte messages and wants them back
    uppercased; "line" sends `requests` (lines without their newline; by
    default generated ones of `size` bytes with it) and wants one line back
    for each, judged by `check` (default: the request uppercased; see
    `workload.CHECKS`).  `pipeline` requests are in flight per connection.
    With `rate`, each connection sends on a fixed schedule of that many
    requests per second (open loop) and latency counts from each request's
    due time; without it, each reply releases the next request (closed loop).
    A connection that has requests outstanding and receives nothing for
    `stall_timeout` seconds counts as stalled and is closed.  With
    `reconnect`, a connection the server ends mid-request is reopened and its
    requests sent again; those no graceful drain explains are counted in
    `lost` and make the result not `ok` unless `allow_lost`.  A run whose
    connections have all failed ends at once: a broken server cannot hang it.

    Raises UsageError (BadSetting, naming the parameter) for impossible
    settings and RuntimeFailure when the server cannot be reached or a worker
    fails; worker processes never outlive it.
    """
    procs = default_processes() if processes is None else processes
    _check_settings(
        connections=connections,
        size=size,
        duration=duration,
        warmup=warmup,
        idle=idle,
        processes=procs,
        stall_timeout=stall_timeout,
        protocol=protocol,
        requests=requests,
        check=check,
        pipeline=pipeline,
        rate=rate,
    )
    procs = min(procs, connections)
    family, address, target = _resolve(host, port, unix)
    ctx = _context()
    if check is not None and ctx.get_start_method() != "fork":
        try:
            pickle.dumps(check)
        except Exception as exc:
            raise BadSetting(
                "check", check, "must be a module-level function: worker processes get a copy"
            ) from exc
    per_worker = -(-(connections + idle) // procs) + 16
    limit = raise_fd_limit(per_worker)
    if per_worker > limit:
        raise UsageError(
            f"{connections + idle} connections need ~{per_worker} descriptors per process "
            f"but the limit is {limit}; raise `ulimit -n` or use more processes"
        )
    _preflight(family, address, target, connect_timeout, tls)

    hooks = hooks or BenchHooks()
    workers: list[tuple[Any, Connection]] = []
    result = BenchResult(
        target,
        connections,
        size,
        idle,
        procs,
        duration,
        warmup,
        protocol=protocol,
        pipeline=pipeline,
        rate=rate,
        allow_lost=allow_lost,
    )
    first_index = 1
    try:
        for i in range(procs):
            active = connections // procs + (i < connections % procs)
            cfg = WorkerConfig(
                family=family,
                address=address,
                active=active,
                idle=idle // procs + (i < idle % procs),
                size=size,
                warmup=warmup,
                duration=duration,
                stall_timeout=stall_timeout,
                connect_timeout=connect_timeout,
                reconnect=reconnect,
                seed=i * 7919,
                cpus=tuple(cpus) if cpus else None,
                tls=tls,
                first_index=first_index,
                protocol=protocol,
                requests=tuple(requests or ()),
                check=check,
                pipeline=pipeline,
                rate=rate,
            )
            first_index += active + cfg.idle
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=run_worker, args=(child_end, cfg), daemon=True)
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
        _run_workers(workers, result, hooks, connect_timeout)
    finally:
        for proc, pipe in workers:
            pipe.close()
            if proc.is_alive():
                proc.terminate()
        for proc, _pipe in workers:
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
    return result


def _expect(pipe: Connection, kind: str, timeout: float) -> tuple[Any, ...]:
    """Next message of `kind` from a worker, skipping progress; worker errors become failures."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not pipe.poll(left):
            raise RuntimeFailure(f"bench worker did not report {kind} within {timeout:g} s")
        try:
            msg: tuple[Any, ...] = pipe.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeFailure("bench worker exited unexpectedly") from exc
        if msg[0] == "error":
            raise RuntimeFailure(f"bench worker failed: {msg[1]}")
        if msg[0] == kind:
            return msg


def _run_workers(
    workers: list[tuple[Any, Connection]],
    result: BenchResult,
    hooks: BenchHooks,
    connect_timeout: float,
) -> None:
    first_error = ""
    ready_timeout = connect_timeout * 4 + (result.connections + result.idle) / 500 + 10
    for _proc, pipe in workers:
        _kind, n_active, n_idle, _errs, err_text = _expect(pipe, "ready", ready_timeout)
        result.connected += n_active
        result.idle_connected += n_idle
        first_error = first_error or err_text
    if result.connected == 0:
        raise RuntimeFailure(
            f"none of {result.connections} connections to {result.target} succeeded "
            f"({first_error or 'unknown error'}); is the server accepting?"
        )

    pipes = [pipe for _proc, pipe in workers]
    live = list(pipes)
    for pipe in pipes:
        pipe.send("go")
    t_go = time.monotonic()
    t_measure = t_go + result.warmup
    t_end = t_measure + result.duration
    done = {id(p): 0 for p in pipes}
    errs_now = {id(p): 0 for p in pipes}
    in_window = False
    next_tick = t_go
    finals: dict[int, dict[str, Any]] = {}

    def handle(pipe: Any) -> None:
        try:
            msg = pipe.recv()
        except (EOFError, OSError) as exc:
            if id(pipe) in finals:
                live.remove(pipe)  # reported, then exited: done, not a failure
                return
            raise RuntimeFailure("bench worker exited unexpectedly") from exc
        if msg[0] == "progress":
            done[id(pipe)] = msg[1]
            errs_now[id(pipe)] = msg[3]
        elif msg[0] == "result":
            finals[id(pipe)] = msg[1]
        elif msg[0] == "error":
            raise RuntimeFailure(f"bench worker failed: {msg[1]}")

    now = t_go
    while len(finals) < len(pipes):  # a worker reports early once all its connections failed
        now = time.monotonic()
        if not in_window and now >= t_measure:
            in_window = True
            hooks.window_start()
        if now >= t_end:
            break
        if now >= next_tick:
            next_tick = now + PROGRESS_EVERY
            phase = "measure" if in_window else "warmup"
            n_errors = sum(errs_now.values())
            hooks.tick(Progress(phase, now - t_go, sum(done.values()), n_errors))
        wake = min(next_tick, t_end, t_measure if not in_window else t_end)
        for ready in wait(live, timeout=max(0.0, wake - time.monotonic())):
            handle(ready)
    if not in_window:
        hooks.window_start()
    result.window_s = round(max(0.0, min(now, t_end) - t_measure), 3)
    hooks.window_end()

    deadline = time.monotonic() + _RESULT_GRACE
    while len(finals) < len(pipes):
        left = deadline - time.monotonic()
        waiting = [p for p in pipes if id(p) not in finals]
        if left <= 0:
            raise RuntimeFailure(f"{len(waiting)} bench worker(s) did not finish in time")
        for ready in wait(waiting, timeout=left):
            handle(ready)
    _add_up(result, list(finals.values()))
    hooks.tick(Progress("done", now - t_go, sum(done.values()), result.errors.total))


def _add_up(result: BenchResult, finals: list[dict[str, Any]]) -> None:
    errors = ErrorCounts()
    hist: dict[int, int] = {}
    lat_total = lat_max = n_bytes = 0
    failures = []
    lost: list[tuple[float, str]] = []
    for final in finals:
        result.requests += final["requests"]
        n_bytes += final["bytes"]
        merge(hist, final["hist"])
        lat_total += final["lat_total"]
        lat_max = max(lat_max, final["lat_max"])
        errors.add(final["errors"])
        result.alive_at_end += final["alive"]
        result.reconnects += final["reconnects"]
        result.lost += final["lost"]
        if final["failure"] is not None:
            failures.append(final["failure"])
        if final["first_lost"] is not None:
            lost.append(final["first_lost"])
    if failures:
        _t, result.first_error_kind, result.first_error = min(failures)
    if lost:
        result.first_lost = min(lost)[1]
    result.errors = errors
    result.latency_ms = summarize(hist, lat_total, lat_max, result.requests)
    window = result.window_s if result.window_s > 0 else result.duration
    result.requests_per_s = round(result.requests / window, 1)
    result.mb_per_s = round(n_bytes / window / 1e6, 3)
