"""`muxio serve --workers N`: one supervisor, N worker processes, each its own loop.

The supervisor never serves: it holds the listening sockets, starts the
workers, replaces the ones that die or stop answering and passes signals
on.  Keeping it this small is what lets it outlive any worker's crash.  It
has the shape of gunicorn's arbiter: a queue of signals fed by handlers, a
self-pipe that wakes a `select`, and all the work done in the main loop,
never in a handler.

A worker is a fresh ``python -m muxio serve`` with the same command line and
a ``MUXIO_WORKER`` variable that says which sockets to serve and where to
report; a fresh interpreter (not `fork`) inherits no half-held lock or
thread from the supervisor, and a SIGHUP reload picks up new code.  It
reports on a pipe: ``ready`` once it accepts, ``beat`` every `HEARTBEAT`
seconds from a loop timer, then its totals as JSON when it has drained, or
``error <line>`` if its configuration is wrong (it then exits with code 2):
the supervisor stops with that line rather than start worker after worker
that fail alike.  The heartbeat rides that pipe because it is the one each
worker writes and only the supervisor reads: a worker whose loop is stuck,
or that is stopped, falls silent, and after ``--worker-timeout`` seconds the
supervisor kills it and starts another in its place.  A worker told to drain
(a reload, SIGTTOU) that is still running ``--shutdown-timeout`` plus
`KILL_GRACE` seconds later is killed too.  Each worker also holds a
"lifeline" pipe whose other end only the supervisor has: if the supervisor
is killed outright, the workers see EOF on it and drain as on SIGTERM rather
than linger unsupervised.

The TLS files (certificate, key, client CA, key password) are read once, by
the supervisor, and handed to each worker in an anonymous file whose
descriptor it inherits, never on its command line or in its environment: a
``/dev/fd/N`` from a shell's ``<(...)`` is a pipe that can be read once and
that the workers do not have.  A SIGHUP re-reads the files that are
regular files (a renewed certificate) and checks them before starting any
new worker; if they are broken, the reload is abandoned and the old
workers keep serving.

Two ways to share the port (`--worker-sockets`); in both the supervisor
binds and holds every listening socket and the workers inherit them:

``reuseport`` (default on Linux for TCP)
    One ``SO_REUSEPORT`` socket per worker *slot*, and the kernel spreads new
    connections evenly over them by a hash.  A worker replaced (a reload, a
    crash, a stuck worker killed) is replaced in the same slot: the new one
    inherits the same socket, so the connections queued on it are the new
    worker's to accept.  During a reload old and new accept on it together
    until the old one, once the new one is ready, closes its copy; the
    socket itself never closes, so nothing queued is reset, whatever
    ``net.ipv4.tcp_migrate_req`` says.  This is HAProxy's seamless reload
    (the listening sockets outlive the process serving them), and it was
    chosen over "the old worker drains its accept queue, then closes" because
    that leaves a window, between its last ``accept`` and its ``close``, in
    which the kernel still queues new connections on the socket and then
    resets them; it cannot be closed without the sysctl.  Handing the
    sockets over needs no descriptor passing: the supervisor starts every
    worker, so each inherits its slot's socket at birth.  Only a slot given
    up (SIGTTOU) or a worker whose restart is delayed (it keeps dying at
    start) closes a socket, so that new connections go to the serving workers
    instead of waiting; what was queued on it then is reset.
``shared``
    The supervisor binds one socket and every worker accepts on it.  Portable
    (and the only way for ``--unix``, ``--fd`` and systemd sockets), and a
    worker leaving never loses a queued connection: the others take it.  But
    every idle worker is woken for each new connection and the busiest often
    wins the race, so the spread is uneven.

A draining worker answers what it accepted: `Server.shutdown(first_request_grace=)`
gives a connection accepted just before the drain, which has sent nothing yet, a moment
to deliver its first request, so a reload under a connection per request loses none; what
a socket already holds when the drain begins is read and answered, and a coroutine
handler still working on a request is waited for (`protocol_busy()`).
"""

from __future__ import annotations

import base64
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

from .errors import MuxioError
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
HEARTBEAT = 1.0
"""Seconds between a worker's heartbeats; `--worker-timeout` must be longer."""
WORKER_TIMEOUT = 30.0
"""gunicorn's default: long enough that a busy but live loop is never killed by mistake."""
KILL_GRACE = 5.0
"""Seconds past `--shutdown-timeout` a draining worker has to report before it is killed."""


# -- the worker's side ---------------------------------------------------------


class WorkerSpec:
    """What the supervisor told one worker, read from ``MUXIO_WORKER``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.index: int = spec["index"]
        self.report_fd: int = spec["report"]
        self.lifeline_fd: int | None = spec.get("lifeline")
        self.fds: list[int] = spec.get("fds", [])
        self.tls_fd: int | None = spec.get("tls")

    @classmethod
    def from_environment(cls) -> WorkerSpec | None:
        text = os.environ.pop(ENV, None)
        if text is None:
            return None
        return cls(json.loads(text))

    def sockets(self) -> list[socket.socket]:
        from .activation import socket_from_fd

        return [socket_from_fd(fd, f"worker socket {fd}") for fd in self.fds]

    def tls_contents(self) -> dict[str, bytes]:
        """The TLS files the supervisor read, by role (empty without TLS)."""
        fd, self.tls_fd = self.tls_fd, None
        if fd is None:
            return {}
        try:
            data = b""
            while chunk := os.pread(fd, 1 << 20, len(data)):
                data += chunk
        finally:
            os.close(fd)
        return {role: base64.b64decode(text) for role, text in json.loads(data).items()}

    def report_error(self, message: str) -> bool:
        """Tell the supervisor this worker cannot start as configured; False if it is gone."""
        line = " ".join(message.split())  # one line, whatever the message held
        try:
            os.write(self.report_fd, b"error " + line.encode("utf-8", "replace") + b"\n")
        except OSError:
            return False
        return True

    def wrap_on_start(
        self, on_start: Callable[[EventLoop], object] | None
    ) -> Callable[[EventLoop], object]:
        """Tell the supervisor "ready" once the loop runs (the server listens by then).

        Then a heartbeat every `HEARTBEAT` seconds from a loop timer: a loop
        that is stuck, or a process that is stopped, falls silent, and the
        supervisor replaces it (`--worker-timeout`).
        """

        def beat(loop: EventLoop) -> None:
            if self._send(b"beat\n"):
                loop.call_later(HEARTBEAT, beat, loop)

        def start(loop: EventLoop) -> None:
            if on_start is not None:
                on_start(loop)
            loop.call_soon(self._send, b"ready\n")
            loop.call_later(HEARTBEAT, beat, loop)
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
        fd, self.report_fd = self.report_fd, -1
        with contextlib.suppress(OSError):
            os.close(fd)

    def _send(self, data: bytes) -> bool:
        """Write to the supervisor; False once the pipe is closed (never a reused descriptor)."""
        if self.report_fd < 0:
            return False
        try:
            os.write(self.report_fd, data)
        except OSError:
            return False
        return True


# -- the supervisor's side -----------------------------------------------------


class Worker:
    """One worker process as the supervisor sees it."""

    def __init__(
        self, index: int, proc: subprocess.Popen[bytes], report_fd: int, slot: int
    ) -> None:
        self.index = index
        self.proc = proc
        self.report_fd: int | None = report_fd
        self.slot = slot
        """Which of the supervisor's SO_REUSEPORT sockets it serves (0 when they share one)."""
        self.started = time.monotonic()
        self.heard = self.started
        """When it last wrote anything on its report pipe: a heartbeat at least."""
        self.ready = False
        self.retiring = False
        self.kill_at = float("inf")
        """A retiring worker still running then is killed: one stuck cannot hold its slot."""
        self.killed = False
        self.drained_at_stop = False
        self.totals: dict[str, Any] | None = None
        self.error: str | None = None
        """The configuration error it reported before exiting, if any."""
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
        else:
            self.heard = time.monotonic()
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if line == b"ready":
                self.ready = True
                log.info("worker %d (pid %d) ready", self.index, self.pid)
            elif line.startswith(b"error "):
                self.error = line[6:].decode("utf-8", "replace")
            elif line.startswith(b"{"):
                with contextlib.suppress(ValueError):
                    self.totals = json.loads(line)


class Supervisor:
    """Keeps `count` workers running until told to stop; see the module's docstring."""

    def __init__(
        self,
        argv: list[str],
        count: int,
        *,
        shutdown_timeout: float,
        shared: list[socket.socket] | None = None,
        reuseport: list[socket.socket] | None = None,
        backlog: int = 1024,
        tls_contents: dict[str, bytes] | None = None,
        reload_tls: Callable[[], dict[str, bytes]] | None = None,
        worker_timeout: float | None = WORKER_TIMEOUT,
    ) -> None:
        from . import validate

        self.argv = argv
        self.count = count
        self.shutdown_timeout = shutdown_timeout
        self.worker_timeout = validate.worker_timeout(worker_timeout)
        self.shared = shared or []
        self.slots: dict[int, list[socket.socket]] = {0: reuseport} if reuseport else {}
        """Slot number to its listening SO_REUSEPORT sockets (one per address), held here."""
        self._addresses = [s.getsockname()[:2] for s in reuseport or []]
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
        self.config_error: str | None = None
        """A worker's configuration error that stopped the supervisor (exit code 2)."""
        self.reload_tls = reload_tls
        self._tls_fd = _contents_file(tls_contents) if tls_contents else None
        self._wake_r, self._wake_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- processes -------------------------------------------------------------

    def _slot_sockets(self, slot: int) -> list[socket.socket]:
        """The sockets a worker in `slot` serves, bound here the first time a slot is used."""
        if self.shared:
            return self.shared
        if slot not in self.slots:
            self.slots[slot] = self._bind_slot()
        return self.slots[slot]

    def _bind_slot(self) -> list[socket.socket]:
        from .listeners import bind_tcp

        sockets: list[socket.socket] = []
        try:
            for host, port in self._addresses:
                sockets += bind_tcp(host, port, backlog=self.backlog, reuse_port=True)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        for sock in sockets:
            os.set_inheritable(sock.fileno(), False)
        return sockets

    def _close_slot(self, slot: int) -> None:
        """Give up a slot no worker will serve again; what is queued on it is reset."""
        for sock in self.slots.pop(slot, []):
            close_listener(sock)

    def _recycle_slot(self, slot: int) -> None:
        """A fresh socket for a slot whose worker will not be back soon.

        The kernel keeps handing a slot's socket its share of new connections
        while no one accepts there; closing it sends them to the workers that
        serve.  The new one is bound before the old one closes, so the port
        is never free.
        """
        if slot in self.slots:
            try:
                fresh = self._bind_slot()
            except (OSError, MuxioError) as exc:
                log.warning("cannot renew the socket of worker slot %d: %s", slot, exc)
                return
            self._close_slot(slot)
            self.slots[slot] = fresh

    def spawn(self, slot: int = 0) -> Worker:
        index = self.next_index
        self.next_index += 1
        sockets = self._slot_sockets(slot)
        report_r, report_w = os.pipe()
        os.set_blocking(report_r, False)
        spec: dict[str, Any] = {
            "index": index,
            "report": report_w,
            "lifeline": self._life_r,
            "fds": [s.fileno() for s in sockets],
        }
        pass_fds = [report_w, self._life_r, *spec["fds"]]
        if self._tls_fd is not None:
            spec["tls"] = self._tls_fd
            pass_fds.append(self._tls_fd)
        env = dict(os.environ)
        env[ENV] = json.dumps(spec)
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
        worker = Worker(index, proc, report_r, slot)
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
            if self._failed_at_start(worker, code):
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
            if delay and not self._serves(worker.slot):
                self._recycle_slot(worker.slot)
            log.warning(
                "worker %d (pid %d) died (%s) after %.1f s; %s",
                worker.index, pid, _how(code), lived,
                "restarting it now" if not delay else f"restarting it in {delay:g} s",
            )

    def _serves(self, slot: int) -> bool:
        return any(w.slot == slot for w in self.workers.values())

    def _failed_at_start(self, worker: Worker, code: int) -> bool:
        """A worker that never served: abandon a reload, or stop on a configuration error."""
        if worker.ready:
            return False
        if self.replacement is not None and self.replacement[0] is worker:
            why = worker.error or _how(code)
            log.error(
                "reload: worker %d (pid %d) failed at start-up (%s); "
                "reload abandoned, old workers keep serving",
                worker.index, worker.pid, why,
            )
            self.replacement = None
            self.replacing.clear()
            return True
        if code != 2 and worker.error is None:
            return False
        self.config_error = worker.error or (
            f"worker {worker.index} exited with code 2 at start-up: a configuration error"
        )
        log.error(
            "worker %d (pid %d) failed at start-up with a configuration error; "
            "stopping every worker", worker.index, worker.pid,
        )
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.shutdown_timeout + 5.0
        self._signal_all(signal.SIGTERM)
        return True

    def _reload_tls(self) -> bool:
        """Re-read and check the TLS files before a reload; False if they are broken."""
        if self.reload_tls is None:
            return True
        try:
            contents = self.reload_tls()
        except MuxioError as exc:
            log.error("reload: %s; reload abandoned, old workers keep serving", exc)
            return False
        old, self._tls_fd = self._tls_fd, _contents_file(contents) if contents else None
        if old is not None:
            os.close(old)
        return True

    def manage(self) -> None:
        """Start or retire workers until `count` are serving."""
        if self.stopping:
            return
        being_replaced = self.replacement[1] if self.replacement is not None else None
        active = [w for w in self.workers.values() if not w.retiring and w is not being_replaced]
        if len(active) < self.count and time.monotonic() >= self.restart_at:
            taken = {w.slot for w in active} if not self.shared else set()
            free = [n for n in range(self.count + len(active)) if n not in taken]
            for slot in free[: self.count - len(active)]:
                try:
                    self.spawn(slot)
                except (OSError, MuxioError) as exc:  # out of processes, memory, ports
                    self.failures += 1
                    delay = min(RESTART_DELAY_MAX, 0.5 * 2 ** (self.failures - 1))
                    self.restart_at = time.monotonic() + delay
                    log.error("cannot start a worker: %s; trying again in %g s",
                              getattr(exc, "strerror", None) or exc, delay)
                    break
        elif len(active) > self.count:
            for worker in sorted(active, key=lambda w: (-w.slot, -w.index))[
                : len(active) - self.count
            ]:
                self.retire(worker)
                if worker.slot >= self.count:
                    self._close_slot(worker.slot)  # no new connection is queued there
        self._step_reload()

    def retire(self, worker: Worker) -> None:
        worker.retiring = True
        worker.kill_at = time.monotonic() + self.shutdown_timeout + KILL_GRACE
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGTERM)

    def check_alive(self) -> None:
        """Kill a worker that fell silent, or a retiring one past its deadline.

        A stopped process or a stuck loop holds its slot's share of new
        connections and answers none; reap() then starts another in its slot,
        which takes over the connections queued there.
        """
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.killed:
                continue
            if worker.retiring and now > worker.kill_at:
                log.error("worker %d (pid %d) still draining after %g s: killing it",
                          worker.index, worker.pid, self.shutdown_timeout + KILL_GRACE)
            elif (
                self.worker_timeout
                and worker.ready
                and not worker.retiring
                and not self.stopping
                and now - worker.heard > self.worker_timeout
            ):
                log.error("worker %d (pid %d) silent for %.1f s: killing it",
                          worker.index, worker.pid, now - worker.heard)  # fmt: skip
            else:
                continue
            worker.killed = True
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()

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
                # the same slot: both accept on its socket until the old one retires
                self.replacement = (self.spawn(old.slot), old)

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
                if not self._reload_tls():
                    continue
                old = [w for w in self.workers.values() if not w.retiring]
                log.info("SIGHUP: replacing %d workers one at a time", len(old))
                self.replacing = sorted(old, key=lambda w: w.index)
            elif signum == signal.SIGUSR1:
                self._signal_all(signal.SIGUSR1)  # each worker logs its statistics line
            elif signum == signal.SIGUSR2:
                self._signal_all(signal.SIGUSR2)  # each worker profiles its loop, to its own file
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
                self.check_alive()
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
            for sock in self.shared:
                close_listener(sock)
            for slot in list(self.slots):
                self._close_slot(slot)
            for fd in (self._wake_r, self._wake_w, self._life_r, self._life_w):
                os.close(fd)
            if self._tls_fd is not None:
                os.close(self._tls_fd)
                self._tls_fd = None
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


def _contents_file(contents: dict[str, bytes]) -> int:
    """A descriptor of an anonymous file holding `contents`, for workers to inherit.

    Not a pipe (a worker restarted later must be able to read it too) and
    not a named file (nothing to clean up, nothing for another user to find).
    """
    data = json.dumps({role: base64.b64encode(v).decode() for role, v in contents.items()})
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("muxio-tls", os.MFD_CLOEXEC)
    else:
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
        os.set_inheritable(fd, False)
    view = memoryview(data.encode())
    while view:
        view = view[os.write(fd, view) :]
    return fd


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def supervise(
    args: argparse.Namespace,
    sockets: list[socket.socket] | None,
    tls_contents: dict[str, bytes] | None = None,
    reload_tls: Callable[[], dict[str, bytes]] | None = None,
) -> int:
    """Run `muxio serve` as a supervisor of `args.workers` workers; the exit code.

    `tls_contents` are the TLS files as read (handed to every worker);
    `reload_tls()` reads and checks them again for a SIGHUP, raising a
    `MuxioError` if they are broken.
    """
    from .listeners import bind_tcp, bind_unix
    from .server import format_address

    mode = args.worker_sockets
    if mode is None:
        reuseport_ok = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
        mode = "reuseport" if reuseport_ok and sockets is None and args.unix is None else "shared"
    if mode == "reuseport" and (sockets is not None or args.unix is not None):
        raise ValueError("SO_REUSEPORT workers bind their own TCP sockets: share these instead")
    reuseport: list[socket.socket] = []
    if sockets is not None:
        shared = sockets
    elif mode == "shared":
        if args.unix is not None:
            shared = bind_unix(args.unix, backlog=args.backlog, mode=args.unix_mode)
        else:
            shared = bind_tcp(args.host, args.port, backlog=args.backlog)
    else:
        shared = []
        reuseport = bind_tcp(args.host, args.port, backlog=args.backlog, reuse_port=True)
    for sock in shared + reuseport:
        os.set_inheritable(sock.fileno(), False)  # pass_fds makes them inheritable per worker
    where = ", ".join(format_address(s) for s in shared or reuseport)
    log.info("supervisor (pid %d) on %s: %d workers, %s sockets",
             os.getpid(), where, args.workers, mode)
    supervisor = Supervisor(
        list(args.argv),
        args.workers,
        shutdown_timeout=args.shutdown_timeout,
        shared=shared,
        reuseport=reuseport,
        backlog=args.backlog,
        tls_contents=tls_contents,
        reload_tls=reload_tls,
        worker_timeout=args.worker_timeout,
    )
    totals = supervisor.run()
    if supervisor.config_error is not None:
        from .errors import UsageError

        raise UsageError(supervisor.config_error)
    log.info("shutdown complete: %s", " ".join(f"{k}={v}" for k, v in totals.items()))
    return 0 if totals["drain"] == "complete" else 1


__all__ = ["Supervisor", "WorkerSpec", "supervise"]
