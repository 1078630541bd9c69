"""`muxio serve --workers N`: one supervisor, N worker processes, each its own loop.

The supervisor never serves: it holds the listening sockets (or, with
``SO_REUSEPORT``, the port), starts the workers, restarts the ones that die
and passes signals on.  Keeping it this small is what lets it outlive any
worker's crash.  It has the shape of gunicorn's arbiter: a queue of signals
fed by handlers, a self-pipe that wakes a `select`, and all the work done in
the main loop, never in a handler.

A worker is a fresh ``python -m muxio serve`` with the same command line and
a ``MUXIO_WORKER`` variable that says which sockets to serve and where to
report; a fresh interpreter (not `fork`) inherits no half-held lock or
thread from the supervisor, and a SIGHUP reload picks up new code.  It
reports on a pipe: ``ready`` once it accepts, then its totals as JSON when it
has drained.  It also holds a "lifeline" pipe whose other end only the
supervisor has: if the supervisor is killed outright, the workers see EOF on
it and drain as on SIGTERM rather than linger unsupervised.

Two ways to share the port (`--worker-sockets`):

``reuseport`` (default on Linux for TCP)
    Each worker binds its own socket with ``SO_REUSEPORT`` and the kernel
    spreads new connections evenly over them by a hash; the supervisor holds
    a bound, non-listening socket so the port stays ours between workers.
    A connection still in a worker's accept queue when that worker closes
    its socket is reset by the kernel (unless ``net.ipv4.tcp_migrate_req``
    is 1, Linux 5.14+), so a reload can fail a few connections under load.
``shared``
    The supervisor binds one socket and every worker accepts on it.  Portable
    (and the only way for ``--unix``, ``--fd`` and systemd sockets), and a
    worker leaving never loses a queued connection: the others take it.  But
    every idle worker is woken for each new connection and the busiest often
    wins the race, so the spread is uneven.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from .listeners import close_listener

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from .loop import EventLoop

log = logging.getLogger("muxio")

ENV = "MUXIO_WORKER"
RESTART_DELAY_MAX = 30.0
"""Longest wait before restarting a worker that keeps dying at start."""
CRASH_WINDOW = 10.0
CRASHES_TOLERATED = 3
"""Serving workers that may die within CRASH_WINDOW seconds before restarts back off."""
READY_TIMEOUT = 30.0


# -- the worker's side ---------------------------------------------------------


class WorkerSpec:
    """What the supervisor told one worker, read from ``MUXIO_WORKER``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.index: int = spec["index"]
        self.report_fd: int = spec["report"]
        self.lifeline_fd: int | None = spec.get("lifeline")
        self.fds: list[int] = spec.get("fds", [])
        self.reuseport: list[list[Any]] = spec.get("reuseport", [])
        self.backlog: int = spec.get("backlog", 1024)

    @classmethod
    def from_environment(cls) -> WorkerSpec | None:
        text = os.environ.pop(ENV, None)
        if text is None:
            return None
        return cls(json.loads(text))

    def sockets(self) -> list[socket.socket]:
        from .activation import socket_from_fd
        from .listeners import bind_tcp

        if self.fds:
            return [socket_from_fd(fd, f"worker socket {fd}") for fd in self.fds]
        sockets: list[socket.socket] = []
        for host, port in self.reuseport:
            sockets += bind_tcp(host, port, backlog=self.backlog, reuse_port=True)
        return sockets

    def wrap_on_start(
        self, on_start: Callable[[EventLoop], object] | None
    ) -> Callable[[EventLoop], object]:
        """Tell the supervisor "ready" once the loop runs (the server listens by then)."""

        def start(loop: EventLoop) -> None:
            if on_start is not None:
                on_start(loop)
            loop.call_soon(self._send, b"ready\n")
            if self.lifeline_fd is not None:
                fd = self.lifeline_fd
                os.set_blocking(fd, False)

                def supervisor_gone() -> None:
                    with contextlib.suppress(BlockingIOError):
                        if os.read(fd, 1):
                            return
                    loop.remove_reader(fd)
                    log.warning("the supervisor is gone: shutting down")
                    os.kill(os.getpid(), signal.SIGTERM)

                loop.add_reader(fd, supervisor_gone)

        return start

    def report(self, totals: dict[str, object]) -> None:
        self._send(json.dumps(totals).encode() + b"\n")
        with contextlib.suppress(OSError):
            os.close(self.report_fd)

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.report_fd, data)


# -- the supervisor's side -----------------------------------------------------


class Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, index: int, proc: subprocess.Popen[bytes], report_fd: int) -> None:
        self.index = index
        self.proc = proc
        self.report_fd: int | None = report_fd
        self.started = time.monotonic()
        self.ready = False
        self.retiring = False
        self.drained_at_stop = False
        self.totals: dict[str, Any] | None = None
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_report(self) -> None:
        """Take what the worker has written; close our end at its EOF."""
        if self.report_fd is None:
            return
        try:
            chunk = os.read(self.report_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            os.close(self.report_fd)
            self.report_fd = None
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if line == b"ready":
                self.ready = True
                log.info("worker %d (pid %d) ready", self.index, self.pid)
            elif line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    self.totals = json.loads(line)


def _reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bound, non-listening ``SO_REUSEPORT`` sockets: they hold the port, take no connection."""
    from .listeners import bind_tcp

    return bind_tcp(host, port, backlog=None, reuse_port=True)


class Supervisor:
    """Keeps `count` workers running until told to stop; see the module's docstring."""

    def __init__(
        self,
        argv: list[str],
        count: int,
        *,
        shutdown_timeout: float,
        shared: list[socket.socket] | None = None,
        reserved: list[socket.socket] | None = None,
        backlog: int = 1024,
    ) -> None:
        self.argv = argv
        self.count = count
        self.shutdown_timeout = shutdown_timeout
        self.shared = shared or []
        self.reserved = reserved or []
        self.backlog = backlog
        self.workers: dict[int, Worker] = {}
        self.gone: list[Worker] = []
        self.next_index = 1
        self.failures = 0
        self.deaths: list[float] = []
        self.restart_at = 0.0
        self.signals: list[int] = []
        self.stopping = False
        self.forced = False
        self.stop_deadline = float("inf")
        self.replacing: list[Worker] = []
        self.replacement: tuple[Worker, Worker] | None = None
        """(new, old) during a reload: old retires once new is ready."""
        self._wake_r, self._wake_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- processes -------------------------------------------------------------

    def spawn(self) -> Worker:
        index = self.next_index
        self.next_index += 1
        report_r, report_w = os.pipe()
        os.set_blocking(report_r, False)
        spec: dict[str, Any] = {"index": index, "report": report_w, "lifeline": self._life_r}
        if self.shared:
            spec["fds"] = [s.fileno() for s in self.shared]
        else:
            spec["reuseport"] = [list(s.getsockname()[:2]) for s in self.reserved]
            spec["backlog"] = self.backlog
        env = dict(os.environ)
        env[ENV] = json.dumps(spec)
        pass_fds = [report_w, self._life_r, *spec.get("fds", [])]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "muxio", *self.argv],
                env=env,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches us; we pass it on once
            )
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        worker = Worker(index, proc, report_r)
        self.workers[proc.pid] = worker
        log.info("worker %d started (pid %d)", index, proc.pid)
        return worker

    def reap(self) -> None:
        for pid, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            worker.read_report()
            while worker.report_fd is not None:
                worker.read_report()
            del self.workers[pid]
            self.gone.append(worker)
            worker.drained_at_stop = self.stopping and worker.ready
            if self.stopping or worker.retiring:
                log.info("worker %d (pid %d) exited (%s)", worker.index, pid, _how(code))
                continue
            lived = time.monotonic() - worker.started
            now = time.monotonic()
            self.deaths = [t for t in self.deaths if now - t < CRASH_WINDOW] + [now]
            if not worker.ready:
                self.failures += 1  # it never served: whatever broke it will break the next
            elif len(self.deaths) > CRASHES_TOLERATED:
                self.failures = len(self.deaths) - CRASHES_TOLERATED
            else:
                self.failures = 0
            delay = 0.0 if not self.failures else min(
                RESTART_DELAY_MAX, 0.5 * 2 ** (self.failures - 1)
            )
            self.restart_at = now + delay
            log.warning(
                "worker %d (pid %d) died (%s) after %.1f s; %s",
                worker.index, pid, _how(code), lived,
                "restarting it now" if not delay else f"restarting it in {delay:g} s",
            )

    def manage(self) -> None:
        """Start or retire workers until `count` are serving."""
        if self.stopping:
            return
        being_replaced = self.replacement[1] if self.replacement is not None else None
        active = [w for w in self.workers.values() if not w.retiring and w is not being_replaced]
        if len(active) < self.count and time.monotonic() >= self.restart_at:
            for _ in range(self.count - len(active)):
                try:
                    self.spawn()
                except OSError as exc:  # out of processes or memory: try again later
                    self.failures += 1
                    delay = min(RESTART_DELAY_MAX, 0.5 * 2 ** (self.failures - 1))
                    self.restart_at = time.monotonic() + delay
                    log.error("cannot start a worker: %s; trying again in %g s",
                              exc.strerror or exc, delay)
                    break
        elif len(active) > self.count:
            for worker in sorted(active, key=lambda w: -w.index)[: len(active) - self.count]:
                self.retire(worker)
        self._step_reload()

    def retire(self, worker: Worker) -> None:
        worker.retiring = True
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGTERM)

    def _step_reload(self) -> None:
        """SIGHUP: one new worker ready, then one old one drained away, and so on."""
        if self.replacement is not None:
            new, old = self.replacement
            if new.pid not in self.workers:
                self.replacement = None  # it died: reap() restarts a worker in its place
            elif not new.ready:
                if time.monotonic() - new.started > READY_TIMEOUT:
                    log.error("reload: worker %d never became ready; reload abandoned", new.index)
                    self.replacing.clear()
                    self.replacement = None
                    self.retire(new)
                return
            else:
                self.replacement = None
                self.retire(old)
        while self.replacing and self.replacement is None:
            old = self.replacing.pop(0)
            if old.pid in self.workers and not old.retiring:
                self.replacement = (self.spawn(), old)

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("%s again: stopping every worker now", name)
                    self.forced = True
                    self._signal_all(signal.SIGQUIT)
                else:
                    log.info("%s: draining %d workers (up to %g s)",
                             name, len(self.workers), self.shutdown_timeout)
                    self.stopping = True
                    self.stop_deadline = time.monotonic() + self.shutdown_timeout + 5.0
                    self._signal_all(signal.SIGTERM)
            elif signum == signal.SIGQUIT:
                log.warning("%s: stopping every worker now", name)
                self.stopping = self.forced = True
                self.stop_deadline = time.monotonic() + 5.0
                self._signal_all(signal.SIGQUIT)
            elif signum == signal.SIGHUP and not self.stopping:
                old = [w for w in self.workers.values() if not w.retiring]
                log.info("SIGHUP: replacing %d workers one at a time", len(old))
                self.replacing = sorted(old, key=lambda w: w.index)
            elif signum == signal.SIGUSR1:
                self._signal_all(signal.SIGUSR1)  # each worker logs its statistics line
            elif signum == signal.SIGTTIN and not self.stopping:
                self.count += 1
                log.info("SIGTTIN: %d workers", self.count)
            elif signum == signal.SIGTTOU and not self.stopping:
                if self.count > 1:
                    self.count -= 1
                    log.info("SIGTTOU: %d workers", self.count)
                else:
                    log.info("SIGTTOU ignored: one worker is the least")

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signum)

    # -- the main loop ---------------------------------------------------------

    def run(self) -> dict[str, object]:
        # every signal whose default would kill the supervisor and orphan its workers
        handled = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGALRM]
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self.manage()
            while self.workers or not self.stopping:
                self.handle_signals()
                self.reap()
                if self.stopping and time.monotonic() > self.stop_deadline:
                    log.error("%d workers did not stop in time: killing them", len(self.workers))
                    self.forced = True
                    self._signal_all(signal.SIGKILL)
                    self.stop_deadline = float("inf")
                self.manage()
                if not self.workers and self.stopping:
                    break
                self._wait()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for sock in self.shared + self.reserved:
                close_listener(sock)
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)
        return self.summary()

    def _wait(self) -> None:
        timeout = 1.0
        if self.restart_at > time.monotonic():
            timeout = min(timeout, self.restart_at - time.monotonic())
        if self.replacement is not None:
            timeout = 0.05
        fds = [self._wake_r] + [w.report_fd for w in self.workers.values()
                                if w.report_fd is not None]
        try:
            readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        except InterruptedError:
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        for worker in list(self.workers.values()):
            if worker.report_fd in readable:
                worker.read_report()

    def summary(self) -> dict[str, object]:
        totals: dict[str, object] = {"workers": len(self.gone)}
        keys = ("connections", "refused", "bytes_in", "bytes_out")
        for key in keys:
            totals[key] = sum(int((w.totals or {}).get(key, 0)) for w in self.gone)
        # a worker that crashed or never started had nothing to drain
        drained = [w for w in self.gone if w.drained_at_stop]
        complete = all((w.totals or {}).get("drain") == "complete" for w in drained)
        totals["drain"] = "forced" if self.forced else ("complete" if complete else "timeout")
        totals["per_worker"] = ",".join(
            f"{w.index}:{(w.totals or {}).get('connections', '?')}"
            for w in sorted(self.gone, key=lambda w: w.index)
        )
        return totals


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(args: argparse.Namespace, sockets: list[socket.socket] | None) -> int:
    """Run `muxio serve` as a supervisor of `args.workers` workers; the exit code."""
    from .listeners import bind_tcp, bind_unix
    from .server import format_address

    mode = args.worker_sockets
    if mode is None:
        reuseport_ok = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
        mode = "reuseport" if reuseport_ok and sockets is None and args.unix is None else "shared"
    if mode == "reuseport" and (sockets is not None or args.unix is not None):
        raise ValueError("SO_REUSEPORT workers bind their own TCP sockets: share these instead")
    reserved: list[socket.socket] = []
    if sockets is not None:
        shared = sockets
    elif mode == "shared":
        if args.unix is not None:
            shared = bind_unix(args.unix, backlog=args.backlog, mode=args.unix_mode)
        else:
            shared = bind_tcp(args.host, args.port, backlog=args.backlog)
    else:
        shared = []
        reserved = _reserve_port(args.host, args.port)
    for sock in shared:
        os.set_inheritable(sock.fileno(), False)  # pass_fds makes them inheritable per worker
    where = ", ".join(format_address(s) for s in shared or reserved)
    log.info("supervisor (pid %d) on %s: %d workers, %s sockets",
             os.getpid(), where, args.workers, mode)
    supervisor = Supervisor(
        list(args.argv),
        args.workers,
        shutdown_timeout=args.shutdown_timeout,
        shared=shared,
        reserved=reserved,
        backlog=args.backlog,
    )
    totals = supervisor.run()
    log.info("shutdown complete: %s", " ".join(f"{k}={v}" for k, v in totals.items()))
    return 0 if totals["drain"] == "complete" else 1


__all__ = ["Supervisor", "WorkerSpec", "supervise"]
