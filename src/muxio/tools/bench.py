"""Closed-loop load generator for the uppercase-echo protocol.

A Python server can only be measured by a client that is cheaper per request
than the server is, so the load is spread over worker processes, each running
one raw epoll loop (selectors elsewhere) with as little work per reply as
possible. Every reply is checked byte for byte: a fast server that answers
wrongly must not look good.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import multiprocessing
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, TextIO

from muxio.errors import RuntimeFailure, UsageError, run_reporting

_IN, _OUT, _ERR, _HUP = 0x001, 0x004, 0x008, 0x010
_LOG_SCALE = 100.0  # histogram buckets are 1% wide
_PAYLOAD_VARIANTS = 16
_CONNECTS_IN_FLIGHT = 256
_PROGRESS_EVERY = 0.25
_RESULT_GRACE = 15.0


@dataclass
class LatencySummary:
    """Round-trip times in milliseconds, from first byte sent to last byte received."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    mean: float = 0.0


@dataclass
class ErrorCounts:
    """Failures by kind; each ends the connection it happened on, so none is double counted."""

    wrong_bytes: int = 0
    resets: int = 0
    connect_failures: int = 0
    stalls: int = 0
    idle_dropped: int = 0

    @property
    def total(self) -> int:
        return (
            self.wrong_bytes + self.resets + self.connect_failures + self.stalls + self.idle_dropped
        )

    def add(self, other: dict[str, int]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + int(other.get(f.name, 0)))


@dataclass
class BenchResult:
    """What one run measured; rates cover only the window after warmup."""

    target: str
    connections: int
    size: int
    idle: int
    processes: int
    duration: float
    warmup: float
    requests: int = 0
    requests_per_s: float = 0.0
    mb_per_s: float = 0.0  # both directions: sent + received, 10**6 bytes
    latency_ms: LatencySummary = field(default_factory=LatencySummary)
    errors: ErrorCounts = field(default_factory=ErrorCounts)
    connected: int = 0
    idle_connected: int = 0
    alive_at_end: int = 0
    reconnects: int = 0
    """With `reconnect`: connections the server closed cleanly mid-request, reopened."""

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.errors.total == 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["errors"]["total"] = self.errors.total
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Progress:
    """A snapshot the parent assembles from the workers' periodic reports."""

    phase: str  # "warmup", "measure" or "done"
    elapsed: float
    requests: int
    errors: int


class BenchHooks:
    """Callbacks around the measured window, so callers can sample the server exactly then."""

    def window_start(self) -> None:
        """Called as warmup ends."""

    def window_end(self) -> None:
        """Called as the measured window ends, before results are collected."""

    def tick(self, progress: Progress) -> None:
        """Called about every quarter second from the go signal to the end of the window."""


@dataclass(frozen=True)
class TLSOptions:
    """How to speak TLS: each worker builds its own context from these (contexts do not pickle)."""

    ca: str | None = None
    insecure: bool = False
    server_name: str | None = None

    def context(self) -> Any:
        from ..tls import client_context

        return client_context(self.ca, insecure=self.insecure)


@dataclass(frozen=True)
class _WorkerConfig:
    family: int
    address: Any
    active: int
    idle: int
    size: int
    warmup: float
    duration: float
    stall_timeout: float
    connect_timeout: float
    seed: int
    cpus: tuple[int, ...] | None
    tls: TLSOptions | None = None
    reconnect: bool = False


def default_processes() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def raise_fd_limit(wanted: int | None = None) -> int:
    """Lift the soft descriptor limit toward the hard one; returns the limit now in force.

    Children inherit it, which is how servers started by compare get it too.
    """
    try:
        import resource
    except ImportError:
        return 1 << 30
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None else max(soft, wanted)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft or soft == resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def make_payloads(size: int, seed: int, count: int = _PAYLOAD_VARIANTS) -> list[bytes]:
    """Mixed lowercase, uppercase, digits, control and non-ASCII bytes, so a server
    that echoes without uppercasing, or uppercases bytes >= 0x80, is caught."""
    rng = random.Random(seed)
    alphabet = bytes(range(ord("a"), ord("z") + 1)) * 4 + bytes(range(256))
    out = []
    for i in range(count):
        body = bytes(rng.choice(alphabet) for _ in range(min(size, 4096)))
        reps = -(-size // len(body))
        b = bytearray((body * reps)[:size])
        b[0] = ord("a") + i % 26
        if size > 1:
            b[-1] = 0xE9
        out.append(bytes(b))
    return out


def _percentile(hist: dict[int, int], total: int, q: float) -> float:
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(total * q))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return math.exp((bucket + 0.5) / _LOG_SCALE)
    return 0.0


def _summarize(hist: dict[int, int], total_ns: int, max_ns: int, count: int) -> LatencySummary:
    ms = 1e-6
    return LatencySummary(
        p50=round(min(_percentile(hist, count, 0.50), max_ns) * ms, 4),
        p90=round(min(_percentile(hist, count, 0.90), max_ns) * ms, 4),
        p99=round(min(_percentile(hist, count, 0.99), max_ns) * ms, 4),
        max=round(max_ns * ms, 4),
        mean=round(total_ns / count * ms, 4) if count else 0.0,
    )


# --- worker ---------------------------------------------------------------------------------


class _Conn:
    __slots__ = (
        "buf",
        "busy",
        "expected",
        "got",
        "idle",
        "last",
        "out",
        "sent",
        "sock",
        "started",
        "variant",
        "view",
        "wants_out",
    )

    def __init__(self, sock: socket.socket, idle: bool, size: int, variant: int) -> None:
        self.sock = sock
        self.idle = idle
        self.buf = bytearray(0 if idle else size)
        self.view = memoryview(self.buf)
        self.expected = b""
        self.out = memoryview(b"")
        self.got = 0
        self.sent = 0
        self.busy = False
        self.started = 0
        self.last = 0
        self.variant = variant
        self.wants_out = False


class _Poll:
    """The few poller calls the worker needs, bound straight to epoll where it exists."""

    def __init__(self) -> None:
        self._ep: Any = None
        self._sel: Any = None
        if hasattr(select, "epoll"):
            self._ep = select.epoll()
            self.poll: Callable[[float], list[tuple[int, int]]] = self._ep.poll
        else:
            import selectors

            self._sel = selectors.DefaultSelector()
            self.poll = self._sel_poll

    def register(self, fd: int, mask: int) -> None:
        if self._ep is not None:
            self._ep.register(fd, mask)
        else:
            self._sel.register(fd, self._sel_mask(mask))

    def modify(self, fd: int, mask: int) -> None:
        if self._ep is not None:
            self._ep.modify(fd, mask)
        else:
            self._sel.modify(fd, self._sel_mask(mask))

    def unregister(self, fd: int) -> None:
        try:
            if self._ep is not None:
                self._ep.unregister(fd)
            else:
                self._sel.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass

    def close(self) -> None:
        if self._ep is not None:
            self._ep.close()
        else:
            self._sel.close()

    @staticmethod
    def _sel_mask(mask: int) -> int:
        import selectors

        return (selectors.EVENT_READ if mask & _IN else 0) | (
            selectors.EVENT_WRITE if mask & _OUT else 0
        )

    def _sel_poll(self, timeout: float) -> list[tuple[int, int]]:
        import selectors

        return [
            (
                key.fd,
                (_IN if ev & selectors.EVENT_READ else 0)
                | (_OUT if ev & selectors.EVENT_WRITE else 0),
            )
            for key, ev in self._sel.select(timeout)
        ]


def _connect_all(
    cfg: _WorkerConfig, poller: _Poll, errors: dict[str, int]
) -> tuple[dict[int, _Conn], str]:
    """Open every connection, a bounded number in flight so a small backlog is not flooded."""
    todo = [False] * cfg.active + [True] * cfg.idle
    todo.reverse()
    pending: dict[int, tuple[socket.socket, bool, float]] = {}
    conns: dict[int, _Conn] = {}
    first_error = ""
    variant = cfg.seed

    def fail(msg: str) -> None:
        nonlocal first_error
        errors["connect_failures"] += 1
        first_error = first_error or msg

    while todo or pending:
        now = time.monotonic()
        while todo and len(pending) < _CONNECTS_IN_FLIGHT:
            idle = todo.pop()
            try:
                s = socket.socket(cfg.family, socket.SOCK_STREAM)
            except OSError as exc:
                fail(f"cannot create socket: {exc.strerror or exc}")
                continue
            if cfg.family == getattr(socket, "AF_UNIX", None):
                # Unix sockets have no connect in progress, only a full backlog.
                s.settimeout(cfg.connect_timeout)
                err = s.connect_ex(cfg.address)
                s.setblocking(False)
            else:
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = s.connect_ex(cfg.address)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                s.close()
                fail(os.strerror(err))
                continue
            pending[s.fileno()] = (s, idle, now + cfg.connect_timeout)
            poller.register(s.fileno(), _OUT)
        for fd, _ev in poller.poll(0.05):
            entry = pending.pop(fd, None)
            if entry is None:
                continue
            s, idle, _deadline = entry
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                poller.unregister(fd)
                s.close()
                fail(os.strerror(err))
                continue
            poller.modify(fd, _IN)
            conns[fd] = _Conn(s, idle, cfg.size, variant)
            variant += 1
        now = time.monotonic()
        for fd, (s, _idle, deadline) in list(pending.items()):
            if now > deadline:
                del pending[fd]
                poller.unregister(fd)
                s.close()
                fail(f"timed out after {cfg.connect_timeout:g} s")
    if cfg.tls is not None:
        first_error = _handshake_all(cfg, poller, conns, fail) or first_error
    return conns, first_error


def _handshake_all(
    cfg: _WorkerConfig, poller: _Poll, conns: dict[int, _Conn], fail: Callable[[str], None]
) -> str:
    """TLS on every connection, one blocking handshake after another (not measured).

    The descriptor stays the same, so the poller's registration holds.
    """
    assert cfg.tls is not None
    ctx = cfg.tls.context()
    first = ""
    for fd, c in list(conns.items()):
        c.sock.settimeout(cfg.connect_timeout)
        try:
            c.sock = ctx.wrap_socket(c.sock, server_hostname=cfg.tls.server_name)
        except OSError as exc:
            poller.unregister(fd)
            del conns[fd]
            c.sock.close()
            msg = f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
            first = first or msg
            fail(msg)
            continue
        c.sock.setblocking(False)
    return first


def _worker(pipe: Connection, cfg: _WorkerConfig) -> None:
    """Run one share of the connections; everything is reported through `pipe`."""
    # forked: a parent's SIGTERM handler (compare's) would turn terminate() into a traceback
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if cfg.cpus and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cfg.cpus)
        raise_fd_limit()
        _worker_run(pipe, cfg)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def _worker_run(pipe: Connection, cfg: _WorkerConfig) -> None:
    errors = {f.name: 0 for f in dataclasses.fields(ErrorCounts)}
    poller = _Poll()
    conns, first_error = _connect_all(cfg, poller, errors)
    n_active = sum(1 for c in conns.values() if not c.idle)
    pipe.send(("ready", n_active, len(conns) - n_active, dict(errors), first_error))
    parent = os.getppid()
    while not pipe.poll(_PROGRESS_EVERY):
        if os.getppid() != parent:
            return  # see below: the parent was killed
    if pipe.recv() != "go":
        return

    payloads = make_payloads(cfg.size, cfg.seed)
    expected = [p.upper() for p in payloads]
    views = [memoryview(p) for p in payloads]
    nvar = len(payloads)
    size = cfg.size
    perf = time.perf_counter_ns
    log = math.log
    scale = _LOG_SCALE
    stall_ns = int(cfg.stall_timeout * 1e9)
    hist: dict[int, int] = {}
    lat_total = 0
    lat_max = 0
    measured = 0
    done_total = 0
    measuring = False
    poll = poller.poll
    modify = poller.modify
    active = {fd: c for fd, c in conns.items() if not c.idle}
    blocked: tuple[type[Exception], ...] = (BlockingIOError,)
    tls_on = cfg.tls is not None
    if cfg.tls is not None:
        import ssl

        # a TLS socket that cannot go on says so with its own errors
        blocked = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
    reconnects = 0

    def close(fd: int, c: _Conn) -> None:
        poller.unregister(fd)
        conns.pop(fd, None)
        active.pop(fd, None)
        c.sock.close()

    def reopen(fd: int, c: _Conn) -> None:
        """The server closed the connection mid-request: send the request again elsewhere.

        What the server did not answer it never accepted, so the whole
        request goes again on a new connection and must come back whole.
        A clean close (a graceful drain) is no error; a reset is still
        counted as one, and the load goes on.
        """
        nonlocal reconnects
        close(fd, c)
        try:
            s = socket.socket(cfg.family, socket.SOCK_STREAM)
            s.settimeout(cfg.connect_timeout)
            s.connect(cfg.address)
            s.setblocking(False)
            if cfg.family != getattr(socket, "AF_UNIX", None):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            errors["connect_failures"] += 1
            return
        reconnects += 1
        c.sock = s
        fd = s.fileno()
        conns[fd] = active[fd] = c
        poller.register(fd, _IN)
        c.got = 0
        try:
            c.sent = s.send(c.out)
        except BlockingIOError:
            c.sent = 0
        except OSError:
            errors["resets"] += 1
            close(fd, c)
            return
        c.wants_out = c.sent < size
        if c.wants_out:
            modify(fd, _IN | _OUT)

    def start(fd: int, c: _Conn) -> bool:
        """Send the next request; False if the connection died doing so."""
        v = c.variant = (c.variant + 1) % nvar
        c.expected = expected[v]
        c.out = views[v]
        c.got = 0
        c.busy = True
        c.started = c.last = perf()
        try:
            c.sent = c.sock.send(c.out)
        except blocked:
            c.sent = 0
        except OSError:
            errors["resets"] += 1
            if cfg.reconnect:
                reopen(fd, c)
                return fd in conns
            close(fd, c)
            return False
        if c.sent < size:
            c.wants_out = True
            modify(fd, _IN | _OUT)
        return True

    t_go = time.perf_counter()
    t_measure = t_go + cfg.warmup
    t_end = t_measure + cfg.duration
    next_report = t_go + _PROGRESS_EVERY
    next_stall_check = t_go + 0.5
    for fd, first in list(active.items()):
        start(fd, first)

    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        if not measuring and now >= t_measure:
            measuring = True
        if now >= next_report:
            next_report = now + _PROGRESS_EVERY
            if os.getppid() != parent:
                # the parent was killed: a forked worker holds the parent's pipe end
                # itself, so the pipe never breaks and only this notices
                return
            pipe.send(("progress", done_total, measured, sum(errors.values())))
        if now >= next_stall_check:
            next_stall_check = now + 0.5
            limit = perf() - stall_ns
            for fd, slow in list(active.items()):
                if slow.busy and slow.last < limit:
                    errors["stalls"] += 1
                    close(fd, slow)
        if not active:
            time.sleep(min(0.05, max(0.0, t_end - now)))
            continue
        for fd, ev in poll(min(0.05, t_end - now)):
            c = conns.get(fd)
            if c is None:
                continue
            if c.idle:
                try:
                    data = c.sock.recv(1)
                except blocked:
                    continue
                except OSError:
                    data = b""
                errors["wrong_bytes" if data else "idle_dropped"] += 1
                close(fd, c)
                continue
            if ev & _OUT and c.wants_out:
                try:
                    c.sent += c.sock.send(c.out[c.sent :])
                except blocked:
                    pass
                except OSError:
                    errors["resets"] += 1
                    close(fd, c)
                    continue
                c.last = perf()
                if c.sent >= size:
                    c.wants_out = False
                    modify(fd, _IN)
            if ev & (_IN | _ERR | _HUP):
                got = c.got
                try:
                    n = c.sock.recv_into(c.view[got:], size - got)
                except blocked:
                    continue
                except OSError:
                    n = -1  # a reset: an error even with --reconnect
                if n <= 0:
                    if cfg.reconnect and n == 0:
                        reopen(fd, c)
                    elif cfg.reconnect:
                        errors["resets"] += 1
                        reopen(fd, c)  # counted, and the load goes on
                    else:
                        errors["resets"] += 1
                        close(fd, c)
                    continue
                got += n
                if tls_on and got < size and n and c.sock.pending():  # type: ignore[attr-defined]
                    # decrypted bytes held by the TLS engine: no poller event will come for them
                    with contextlib.suppress(*blocked):
                        while got < size and c.sock.pending():  # type: ignore[attr-defined]
                            got += c.sock.recv_into(c.view[got:], size - got)
                if got < size:
                    c.got = got
                    c.last = perf()
                    continue
                if c.wants_out or c.buf != c.expected:
                    errors["wrong_bytes"] += 1
                    close(fd, c)
                    continue
                done_total += 1
                if measuring:
                    dt = perf() - c.started
                    measured += 1
                    lat_total += dt
                    if dt > lat_max:
                        lat_max = dt
                    b = int(log(dt) * scale) if dt > 0 else 0
                    hist[b] = hist.get(b, 0) + 1
                start(fd, c)

    alive = len(active)
    for fd, left in list(conns.items()):
        close(fd, left)
    poller.close()
    pipe.send(
        (
            "result",
            {
                "requests": measured,
                "hist": hist,
                "lat_total": lat_total,
                "lat_max": lat_max,
                "errors": errors,
                "alive": alive,
                "reconnects": reconnects,
            },
        )
    )


# --- parent ---------------------------------------------------------------------------------


def _resolve(host: str, port: int, unix: str | None) -> tuple[int, Any, str]:
    if unix:
        if not hasattr(socket, "AF_UNIX"):
            raise UsageError("--unix is not supported on this OS; use --host/--port")
        return socket.AF_UNIX, unix, f"unix:{unix}"
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is out of range; use 1-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host!r} ({exc.strerror}); fix the name") from exc
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
    from .client import start_tls

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
) -> BenchResult:
    """Drive the server at host:port (or `unix`) and return what was measured.

    Raises UsageError for impossible settings and RuntimeFailure when the
    server cannot be reached or a worker fails; worker processes never outlive it.
    """
    if connections < 1:
        raise UsageError(f"--connections {connections} must be at least 1")
    if size < 1:
        raise UsageError(f"--size {size} must be at least 1 byte")
    # `not x <= limit` also catches nan, which compares false with everything
    if not 0 < duration <= 86_400:
        raise UsageError(f"--duration {duration} must be from 0 to 86400 s, e.g. --duration 5")
    if not 0 <= warmup <= 3_600:
        raise UsageError(f"--warmup {warmup} must be from 0 to 3600 s")
    if idle < 0:
        raise UsageError(f"--idle {idle} must be 0 or more")
    if not 0 < stall_timeout <= 86_400:
        raise UsageError(f"--stall-timeout {stall_timeout} must be from 0 to 86400 s, e.g. 5")
    procs = default_processes() if processes is None else processes
    if procs < 1:
        raise UsageError(f"--processes {procs} must be at least 1")
    procs = min(procs, connections)
    family, address, target = _resolve(host, port, unix)
    per_worker = -(-(connections + idle) // procs) + 16
    limit = raise_fd_limit(per_worker)
    if per_worker > limit:
        raise UsageError(
            f"{connections + idle} connections need ~{per_worker} descriptors per process "
            f"but the limit is {limit}; raise `ulimit -n` or use more --processes"
        )
    _preflight(family, address, target, connect_timeout, tls)

    hooks = hooks or BenchHooks()
    ctx = _context()
    workers: list[tuple[Any, Connection]] = []
    result = BenchResult(target, connections, size, idle, procs, duration, warmup)
    try:
        for i in range(procs):
            cfg = _WorkerConfig(
                family=family,
                address=address,
                active=connections // procs + (i < connections % procs),
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
            )
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child_end, cfg), daemon=True)
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

    while True:
        now = time.monotonic()
        if not in_window and now >= t_measure:
            in_window = True
            hooks.window_start()
        if now >= t_end:
            break
        if now >= next_tick:
            next_tick = now + _PROGRESS_EVERY
            phase = "measure" if in_window else "warmup"
            n_errors = sum(errs_now.values())
            hooks.tick(Progress(phase, now - t_go, sum(done.values()), n_errors))
        wake = min(next_tick, t_end, t_measure if not in_window else t_end)
        for ready in wait(live, timeout=max(0.0, wake - time.monotonic())):
            handle(ready)
    hooks.window_end()

    deadline = time.monotonic() + _RESULT_GRACE
    while len(finals) < len(pipes):
        left = deadline - time.monotonic()
        waiting = [p for p in pipes if id(p) not in finals]
        if left <= 0:
            raise RuntimeFailure(f"{len(waiting)} bench worker(s) did not finish in time")
        for ready in wait(waiting, timeout=left):
            handle(ready)

    errors = ErrorCounts()
    hist: dict[int, int] = {}
    lat_total = lat_max = 0
    for final in finals.values():
        result.requests += final["requests"]
        for bucket, n in final["hist"].items():
            hist[bucket] = hist.get(bucket, 0) + n
        lat_total += final["lat_total"]
        lat_max = max(lat_max, final["lat_max"])
        errors.add(final["errors"])
        result.alive_at_end += final["alive"]
        result.reconnects += final.get("reconnects", 0)
    result.errors = errors
    result.latency_ms = _summarize(hist, lat_total, lat_max, result.requests)
    result.requests_per_s = round(result.requests / result.duration, 1)
    result.mb_per_s = round(2 * result.requests * result.size / result.duration / 1e6, 3)
    hooks.tick(Progress("done", now - t_go, sum(done.values()), errors.total))


# --- command line ---------------------------------------------------------------------------


class _PlainDisplay(BenchHooks):
    """One self-overwriting line; enough for a terminal without rich."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last_requests = 0
        self.last_time = 0.0
        self.rate = 0.0
        self.width = 0

    def line(self, p: Progress) -> str:
        dt = p.elapsed - self.last_time
        if dt > 0:
            self.rate = (p.requests - self.last_requests) / dt
        self.last_requests, self.last_time = p.requests, p.elapsed
        return (
            f"{p.phase:<7} {p.elapsed:6.1f} s  {p.requests:>10,} requests  "
            f"{self.rate:>10,.0f}/s  errors {p.errors}"
        )

    def tick(self, progress: Progress) -> None:
        if progress.phase == "done":
            self.stream.write("\r" + " " * self.width + "\r")
        else:
            text = self.line(progress)
            self.width = max(self.width, len(text))
            self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()


class _RichDisplay(_PlainDisplay):
    """Started on the first tick, after the workers exist, so no rich state is forked."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        from rich.live import Live

        self.live: Live | None = None

    def tick(self, progress: Progress) -> None:
        if progress.phase == "done":
            self.stop()
            return
        if self.live is None:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                "",
                console=Console(file=self.stream, highlight=False),
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()
        style = "yellow" if progress.phase == "warmup" else "green"
        self.live.update(f"[{style}]{self.line(progress)}[/]", refresh=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _display(stream: TextIO) -> _PlainDisplay | None:
    if not stream.isatty():
        return None
    try:
        return _RichDisplay(stream)
    except ImportError:
        return _PlainDisplay(stream)


def format_summary(r: BenchResult) -> str:
    e = r.errors
    lat = r.latency_ms
    lines = [
        f"muxio bench: {r.target}, {r.connections} x {r.size} B"
        + (f" + {r.idle} idle" if r.idle else "")
        + f", {r.processes} process(es), {r.duration:g} s after {r.warmup:g} s warmup",
        f"  requests    {r.requests:,} ({r.requests_per_s:,.0f}/s)",
        f"  throughput  {r.mb_per_s:,.2f} MB/s (sent + received)",
        f"  latency ms  p50 {lat.p50:.3f}  p90 {lat.p90:.3f}  p99 {lat.p99:.3f}  max {lat.max:.3f}",
        f"  errors      {e.total}: wrong bytes {e.wrong_bytes}, resets {e.resets}, "
        f"connect failures {e.connect_failures}, stalls {e.stalls}, idle dropped {e.idle_dropped}",
    ]
    if r.connected < r.connections or r.idle_connected < r.idle:
        lines.append(
            f"  connected   {r.connected}/{r.connections} active, {r.idle_connected}/{r.idle} idle"
        )
    return "\n".join(lines)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="server port (default 8080)")
    p.add_argument("--unix", metavar="PATH", help="connect to a Unix socket instead of TCP")
    p.add_argument("--connections", type=int, default=50, help="active connections (default 50)")
    p.add_argument("--size", type=int, default=1024, help="bytes per request (default 1024)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    p.add_argument("--idle", type=int, default=0, help="extra silent connections held open")
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help=f"load generator processes (default {default_processes()})",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="count a connection as stalled after S seconds without progress (default 5)",
    )
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="when the server closes a connection cleanly mid-request (a graceful drain), "
        "send the request again on a new connection instead of counting an error",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    from ..cli import add_tls_client_arguments

    add_tls_client_arguments(p)


def main(args: argparse.Namespace) -> int:
    from ..cli import client_tls

    context, server_name = client_tls(args)
    tls = None if context is None else TLSOptions(args.ca, args.insecure, server_name)
    display = _display(sys.stderr)
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
            stall_timeout=args.stall_timeout,
            hooks=display,
            tls=tls,
            reconnect=args.reconnect,
        )
    finally:
        if isinstance(display, _RichDisplay):
            display.stop()
    if args.json:
        print(result.to_json())
    else:
        print(format_summary(result))
    return 0 if result.ok else 1


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="muxio bench", description=__doc__)
    configure_parser(parser)
    return run_reporting(lambda: main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(_standalone())
