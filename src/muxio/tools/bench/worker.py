"""One load-generating process: raw epoll (selectors elsewhere), as little work per reply as can be.

A Python server can only be measured by a client that is cheaper per request
than the server is, so the parent spreads the connections over several of
these.  Every reply is checked: a fast server that answers wrongly must not
look good, and the first wrong answer is reported in words.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import heapq
import os
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ...histogram import SLOTS, SUB_BITS, sparse
from .config import WorkerConfig
from .metrics import ErrorCounts
from .workload import describe_mismatch, expect_upper, make_lines, make_payloads, show

_IN, _OUT, _ERR, _HUP = 0x001, 0x004, 0x008, 0x010
_CONNECTS_IN_FLIGHT = 256
PROGRESS_EVERY = 0.25
_MAX_LINE_FLOOR = 1 << 16
_RECV = 1 << 16


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


class _Conn:
    __slots__ = (
        "buf",
        "dead",
        "fresh",
        "got",
        "idle",
        "index",
        "inflight",
        "last",
        "next_due",
        "out",
        "queued",
        "rbuf",
        "sock",
        "variant",
        "view",
    )

    def __init__(self, sock: socket.socket, idle: bool, size: int, index: int) -> None:
        self.sock = sock
        self.idle = idle
        self.index = index
        self.buf = bytearray(0 if idle else size)  # echo: one reply, read in place
        self.view = memoryview(self.buf)
        self.got = 0
        self.rbuf = b""  # line: bytes after the last complete reply line
        self.out = bytearray()  # what the socket did not take yet
        self.inflight: deque[tuple[int, int]] = deque()  # (request variant, start ns)
        self.last = 0
        self.variant = index
        self.next_due = 0
        self.queued = False
        self.dead = False
        self.fresh = True  # no reply yet on this connection: see `lost()`


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
    cfg: WorkerConfig, poller: _Poll, errors: dict[str, int]
) -> tuple[dict[int, _Conn], str]:
    """Open every connection, a bounded number in flight so a small backlog is not flooded."""
    todo = [False] * cfg.active + [True] * cfg.idle
    todo.reverse()
    pending: dict[int, tuple[socket.socket, bool, float]] = {}
    conns: dict[int, _Conn] = {}
    first_error = ""
    index = cfg.first_index

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
            conns[fd] = _Conn(s, idle, cfg.size, index)
            index += 1
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
    cfg: WorkerConfig, poller: _Poll, conns: dict[int, _Conn], fail: Callable[[str], None]
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


def run_worker(pipe: Connection, cfg: WorkerConfig) -> None:
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


def _worker_run(pipe: Connection, cfg: WorkerConfig) -> None:
    """Connect, wait for the go, then load until the window ends or no connection is left.

    One function with closures rather than a class: the per-reply path reads
    locals, which is what keeps this client cheaper than the servers it measures.
    """
    errors = {f.name: 0 for f in dataclasses.fields(ErrorCounts)}
    poller = _Poll()
    conns, first_error = _connect_all(cfg, poller, errors)
    n_active = sum(1 for c in conns.values() if not c.idle)
    pipe.send(("ready", n_active, len(conns) - n_active, dict(errors), first_error))
    parent = os.getppid()
    while not pipe.poll(PROGRESS_EVERY):
        if os.getppid() != parent:
            return  # see below: the parent was killed
    if pipe.recv() != "go":
        return

    echo = cfg.protocol == "echo"
    size = cfg.size
    if echo:
        requests = make_payloads(size, cfg.seed)
        expected = [p.upper() for p in requests]
        wire = requests
    else:
        requests = list(cfg.requests) or make_lines(size, cfg.seed)
        expected = []
        wire = [r + b"\n" for r in requests]
    wire_len = [len(w) for w in wire]
    check = cfg.check or expect_upper
    max_line = max(_MAX_LINE_FLOOR, 4 * max(wire_len))
    nreq = len(requests)
    pipeline = cfg.pipeline
    interval = round(1e9 / cfg.rate) if cfg.rate else 0
    perf = time.perf_counter_ns
    stall_ns = int(cfg.stall_timeout * 1e9)
    counts = [0] * SLOTS
    sub = SUB_BITS
    lat_total = 0
    lat_max = 0
    measured = 0
    measured_bytes = 0
    done_total = 0
    measuring = False
    poll = poller.poll
    modify = poller.modify
    active = {fd: c for fd, c in conns.items() if not c.idle}
    due: list[tuple[int, int, _Conn]] = []
    blocked: tuple[type[Exception], ...] = (BlockingIOError,)
    tls_on = cfg.tls is not None
    if tls_on:
        import ssl

        # a TLS socket that cannot go on says so with its own errors
        blocked = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
    reconnects = 0
    lost_requests = 0
    first_lost: tuple[float, str] | None = None
    failure: tuple[float, str, str] | None = None
    if errors["connect_failures"]:
        text = f"{errors['connect_failures']} connection(s) could not connect: {first_error}"
        failure = (time.monotonic(), "connect_failures", text)

    def close(fd: int, c: _Conn) -> None:
        poller.unregister(fd)
        conns.pop(fd, None)
        active.pop(fd, None)
        c.dead = True
        c.sock.close()

    def fail(fd: int, c: _Conn, kind: str, text: str) -> None:
        """Count a failure, keep the first one's words, and give up the connection."""
        nonlocal failure
        errors[kind] += 1
        if failure is None:
            failure = (time.monotonic(), kind, text)
        close(fd, c)

    def lost(fd: int, c: _Conn, reset: bool) -> None:
        """The server closed or reset an active connection.

        With `reconnect`, the requests in flight go again, but they count as
        lost unless a graceful drain explains them: a drain stops reading
        between requests and closes cleanly, so the requests it did not
        answer it never read.  A reset, a reply cut short, or a connection
        closed before its first reply (a server owes the first request of a
        connection it accepted an answer) cannot be told from a server that
        read a request and dropped it.
        """
        nonlocal lost_requests, first_lost
        if cfg.reconnect:
            if reset:
                errors["resets"] += 1  # counted, and the load goes on
            partial = c.got or c.rbuf
            if c.inflight and (reset or partial or c.fresh):
                lost_requests += len(c.inflight)
                if first_lost is None:
                    how = "reset" if reset else "closed"
                    why = ("with a reply cut short" if partial
                           else "before its first reply" if c.fresh and not reset else "")
                    first_lost = (time.monotonic(), f"the server {how} connection {c.index} "
                                  f"{why + ' ' if why else ''}with {len(c.inflight)} "
                                  "request(s) sent and unanswered")  # fmt: skip
            reopen(fd, c)
            return
        waiting = len(c.inflight)
        how = "reset" if reset else "closed"
        fail(fd, c, "resets", f"the server {how} connection {c.index} "
             f"with {waiting} request(s) unanswered")  # fmt: skip

    def reopen(fd: int, c: _Conn) -> None:
        """The server closed the connection mid-request: send the requests again elsewhere.

        What the server did not answer it never accepted, so every request in
        flight goes again on a new connection and must come back whole.  A
        clean close (a graceful drain) is no error; a reset is still counted
        as one, and the load goes on.  A new connection that fails at once is
        closed, not reopened, so a server resetting everything cannot loop this.
        """
        nonlocal reconnects, failure
        close(fd, c)
        try:
            s = socket.socket(cfg.family, socket.SOCK_STREAM)
            s.settimeout(cfg.connect_timeout)
            s.connect(cfg.address)
            s.setblocking(False)
            if cfg.family != getattr(socket, "AF_UNIX", None):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            errors["connect_failures"] += 1
            if failure is None:
                text = f"cannot reconnect connection {c.index}: {exc.strerror or exc}"
                failure = (time.monotonic(), "connect_failures", text)
            return
        reconnects += 1
        c.sock = s
        c.dead = False
        c.fresh = True
        fd = s.fileno()
        conns[fd] = active[fd] = c
        poller.register(fd, _IN)
        c.got = 0
        c.rbuf = b""
        c.last = perf()
        c.out = bytearray(b"".join(wire[v] for v, _t in c.inflight))
        if c.out:
            try:
                del c.out[: s.send(c.out)]
            except blocked:
                pass
            except OSError:
                errors["resets"] += 1
                close(fd, c)
                return
            if c.out:
                modify(fd, _IN | _OUT)

    def flush(fd: int, c: _Conn) -> bool:
        """Send what is waiting in `c.out`; False if the connection is gone."""
        try:
            n = c.sock.send(c.out)
        except blocked:
            n = 0
        except OSError:
            lost(fd, c, True)
            return False
        del c.out[:n]
        c.last = perf()
        if not c.out:
            modify(fd, _IN)
        return True

    def send(fd: int, c: _Conn, start: int) -> bool:
        """Put the next request in flight, its latency counted from `start`."""
        v = c.variant = (c.variant + 1) % nreq
        c.inflight.append((v, start))
        if c.out:
            c.out += wire[v]
            return True
        try:
            n = c.sock.send(wire[v])
        except blocked:
            n = 0
        except OSError:
            lost(fd, c, True)
            return False
        if n < wire_len[v]:
            c.out += wire[v][n:]
            modify(fd, _IN | _OUT)
        return True

    def refill(fd: int, c: _Conn, now: int) -> None:
        """Top the connection up to `pipeline` requests in flight.

        In an open loop, only the requests already due go: each starts its
        clock at its due time, however late it leaves, so a slow reply makes
        the requests queued behind it look as slow as they were.
        """
        if not c.inflight:
            c.last = now
        if interval:
            while len(c.inflight) < pipeline:
                if c.next_due > now:
                    if not c.queued:
                        c.queued = True
                        heapq.heappush(due, (c.next_due, c.index, c))
                    return
                if not send(fd, c, c.next_due):
                    return
                c.next_due += interval
        else:
            while len(c.inflight) < pipeline:
                if not send(fd, c, now):
                    return

    def record(start: int, now: int, nbytes: int) -> None:
        nonlocal done_total, measured, measured_bytes, lat_total, lat_max
        done_total += 1
        if measuring:
            dt = now - start
            measured += 1
            measured_bytes += nbytes
            lat_total += dt
            if dt > lat_max:
                lat_max = dt
            e = dt.bit_length() - sub - 1
            counts[((e << sub) + (dt >> e)) if e > 0 else max(dt, 0)] += 1

    def on_echo(fd: int, c: _Conn) -> None:
        """Read into the reply in place, never past its end: pipelined replies stay apart."""
        now = 0
        while True:
            got = c.got
            try:
                n = c.sock.recv_into(c.view[got:], size - got)
            except blocked:
                break
            except OSError:
                n = -1
            if n <= 0:
                lost(fd, c, n < 0)
                return
            got += n
            if tls_on and got < size and c.sock.pending():  # type: ignore[attr-defined]
                # decrypted bytes held by the TLS engine: no poller event will come for them
                with contextlib.suppress(*blocked):
                    while got < size and c.sock.pending():  # type: ignore[attr-defined]
                        got += c.sock.recv_into(c.view[got:], size - got)
            now = perf()
            c.last = now
            if got < size:
                c.got = got
                break
            c.got = 0
            if not c.inflight:
                fail(fd, c, "wrong_bytes", f"connection {c.index} got {show(c.buf)} "
                     "with no request outstanding")  # fmt: skip
                return
            v, start = c.inflight.popleft()
            if c.buf != expected[v]:
                text = describe_mismatch(expected[v], c.buf)
                fail(fd, c, "wrong_bytes", f"wrong reply on connection {c.index}: {text}")
                return
            record(start, now, 2 * size)
            c.fresh = False
            if not c.inflight:
                break  # the next read would only say EAGAIN
        if now:
            refill(fd, c, now)

    def on_lines(fd: int, c: _Conn) -> None:
        try:
            data = c.sock.recv(_RECV)
        except blocked:
            return
        except OSError:
            lost(fd, c, True)
            return
        if not data:
            lost(fd, c, False)
            return
        if tls_on and c.sock.pending():  # type: ignore[attr-defined]
            with contextlib.suppress(*blocked):
                data += c.sock.recv(c.sock.pending())  # type: ignore[attr-defined]
        now = perf()
        c.last = now
        if c.rbuf:
            data = c.rbuf + data
        pos = 0
        answered = False
        while (end := data.find(b"\n", pos)) >= 0:
            reply = data[pos:end]
            pos = end + 1
            if not c.inflight:
                fail(fd, c, "wrong_bytes", f"connection {c.index} got the line {show(reply)} "
                     "with no request outstanding")  # fmt: skip
                return
            v, start = c.inflight.popleft()
            problem = check(requests[v], reply)
            if problem is not None:
                fail(fd, c, "wrong_bytes", f"wrong reply on connection {c.index} to "
                     f"{show(requests[v])}: {problem}")  # fmt: skip
                return
            record(start, now, wire_len[v] + len(reply) + 1)
            answered = True
            c.fresh = False
        c.rbuf = data[pos:]
        if len(c.rbuf) > max_line:
            fail(fd, c, "wrong_bytes", f"wrong reply on connection {c.index}: no newline in "
                 f"{len(c.rbuf)} bytes ({show(c.rbuf)})")  # fmt: skip
            return
        if answered:
            refill(fd, c, now)

    on_data = on_echo if echo else on_lines
    t_go = perf()
    t_measure = t_go + int(cfg.warmup * 1e9)
    t_end = t_measure + int(cfg.duration * 1e9)
    next_report = t_go + int(PROGRESS_EVERY * 1e9)
    next_stall_check = t_go + 500_000_000
    n_active = max(len(active), 1)
    for i, (fd, first) in enumerate(list(active.items())):
        # an open loop's connections take turns across the interval, not all at once
        first.next_due = t_go + interval * i // n_active
        refill(fd, first, t_go)

    while active:
        now = perf()
        if now >= t_end:
            break
        if not measuring and now >= t_measure:
            measuring = True
        if now >= next_report:
            next_report = now + int(PROGRESS_EVERY * 1e9)
            if os.getppid() != parent:
                # the parent was killed: a forked worker holds the parent's pipe end
                # itself, so the pipe never breaks and only this notices
                return
            pipe.send(("progress", done_total, measured, sum(errors.values())))
        if now >= next_stall_check:
            next_stall_check = now + 500_000_000
            limit = now - stall_ns
            for fd, slow in list(active.items()):
                if slow.inflight and slow.last < limit:
                    fail(fd, slow, "stalls", f"no reply on connection {slow.index} within "
                         f"{cfg.stall_timeout:g} s ({len(slow.inflight)} request(s) unanswered); "
                         "is the server stuck?")  # fmt: skip
        while due and due[0][0] <= now:
            _t, _i, waited = heapq.heappop(due)
            waited.queued = False
            if not waited.dead:
                refill(waited.sock.fileno(), waited, now)
        wait = min(t_end, next_report, next_stall_check, due[0][0] if due else t_end) - now
        for fd, ev in poll(max(wait, 0) / 1e9):
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
                if data:
                    fail(fd, c, "wrong_bytes",
                         f"idle connection {c.index} got {show(data)} without asking")  # fmt: skip
                else:
                    fail(fd, c, "idle_dropped", f"the server closed idle connection {c.index}")
                continue
            if ev & _OUT and c.out and not flush(fd, c):
                continue
            if ev & (_IN | _ERR | _HUP):
                on_data(fd, c)

    alive = len(active)
    for fd, left in list(conns.items()):
        close(fd, left)
    poller.close()
    pipe.send(
        (
            "result",
            {
                "requests": measured,
                "bytes": measured_bytes,
                "hist": sparse(counts),
                "lat_total": lat_total,
                "lat_max": lat_max,
                "errors": errors,
                "alive": alive,
                "reconnects": reconnects,
                "lost": lost_requests,
                "first_lost": first_lost,
                "failure": failure,
            },
        )
    )
