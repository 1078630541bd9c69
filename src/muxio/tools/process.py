"""Start a server process and learn the address it listens on.

A server asked for port 0 picks its own; the only place it says which is its
log. Every server muxio starts (`muxio serve`, its supervisor, the peers in
`muxio.tools.peers`) announces itself with one line format, and this module is
the one place that reads it, so compare, the tests and the benchmark scripts
cannot drift apart on how a server is started, waited for and stopped.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from muxio.errors import RuntimeFailure

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

# "listening on 127.0.0.1:8000 (poller ...", "listening on [::1]:8000, ...",
# "listening on /run/s.sock (...", "supervisor (pid 7) on 127.0.0.1:8000: 2 workers"
_ANNOUNCEMENT = re.compile(
    r"(?:\blistening|\bsupervisor \(pid \d+\)) on "
    r"(?:\[(?P<v6>[^\]]+)\]:(?P<v6port>\d+)|(?P<path>/[^\s,]+)|(?P<host>[\w.-]+):(?P<port>\d+))"
)


def parse_announcement(line: str) -> tuple[str, int] | str | None:
    """The first address a server's "listening on" line names: (host, port) or a socket path."""
    m = _ANNOUNCEMENT.search(line)
    if m is None:
        return None
    if m.group("path"):
        return m.group("path")
    if m.group("v6"):
        return m.group("v6"), int(m.group("v6port"))
    return m.group("host"), int(m.group("port"))


def announcement(host: str, port: int) -> str:
    """The line a server writes once it listens; `parse_announcement` reads it back."""
    shown = f"[{host}]" if ":" in host else host
    return f"listening on {shown}:{port}"


class ServerStartError(RuntimeFailure):
    """The server exited, or stayed silent, before it said where it listens."""


class LineTimeout(ServerStartError, TimeoutError):
    """The awaited line did not come in time; a caller that retries catches `TimeoutError`."""


class ServerProcess:
    """A server subprocess whose stderr is kept line by line; always stopped on exit.

    stderr goes to a pipe drained by a thread, or with `log_file` to a file read
    on demand: a caller about to fork (the load generator does) must have no
    other thread, and a server must never block on a full pipe nobody reads.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        cpu: int | None = None,
        pass_fds: Sequence[int] = (),
        log_file: bool = False,
        new_session: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.name = name or " ".join(self.argv[:3])
        self.host = ""
        self.port = 0
        self.path = ""
        self.exit_code: int | None = None
        self._lines: list[str] = []
        self._consumed = 0
        self._changed = threading.Condition()
        self._eof = False
        self._log_path: str | None = None
        self._log_offset = 0
        self._partial = b""
        self._reader: threading.Thread | None = None
        self._new_session = new_session
        if log_file:
            fd, self._log_path = tempfile.mkstemp(prefix="muxio-server-", suffix=".log")
            stderr: int = fd
        else:
            fd, stderr = -1, subprocess.PIPE
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=None if env is None else dict(env),
                pass_fds=tuple(pass_fds),
                start_new_session=new_session,
            )
        except OSError as exc:
            self._remove_log()
            raise ServerStartError(f"cannot start {self.name}: {exc.strerror or exc}") from None
        finally:
            if fd >= 0:
                os.close(fd)
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
        if not log_file:
            self._reader = threading.Thread(target=self._drain, name="server-stderr", daemon=True)
            self._reader.start()

    # -- stderr ------------------------------------------------------------------------------

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _read_log(self) -> None:
        if self._log_path is None or self._eof:
            return
        exited = self.proc.poll() is not None  # before reading, so nothing written is missed
        with contextlib.suppress(OSError), open(self._log_path, "rb") as f:
            f.seek(self._log_offset)
            data = f.read()
            self._log_offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        self._lines += [ln.decode("utf-8", "replace").rstrip("\r") for ln in complete]
        if exited:
            if self._partial:
                self._lines.append(self._partial.decode("utf-8", "replace"))
                self._partial = b""
            self._eof = True

    def _wait_more(self, seen: int, timeout: float) -> None:
        """Return once there are more than `seen` lines, stderr ended, or `timeout` passed."""
        if self._log_path is None:
            with self._changed:
                self._changed.wait_for(lambda: len(self._lines) > seen or self._eof, timeout)
            return
        deadline = time.monotonic() + timeout
        while True:
            self._read_log()
            if len(self._lines) > seen or self._eof or time.monotonic() >= deadline:
                return
            # a file cannot be waited on: look again shortly
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    @property
    def lines(self) -> list[str]:
        """Every stderr line so far."""
        self._read_log()
        with self._changed:
            return list(self._lines)

    def tail(self, count: int = 5) -> str:
        """The last non-blank stderr lines, joined for a one-line error."""
        shown = [ln.strip() for ln in self.lines if ln.strip()][-count:]
        return " / ".join(shown) if shown else "no output"

    def wait_line(
        self,
        pattern: re.Pattern[str] | str,
        timeout: float = START_TIMEOUT,
        *,
        what: str | None = None,
    ) -> re.Match[str]:
        """The next stderr line (after those already waited for) matching `pattern`.

        `what` names the line in the error, when the pattern itself would not read well.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        wanted = what or f"a line matching {regex.pattern!r}"
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                lines, eof = self._lines[self._consumed :], self._eof
            for line in lines:
                self._consumed += 1
                m = regex.search(line)
                if m is not None:
                    return m
            if eof:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(STOP_TIMEOUT)  # stderr closed: it is exiting, or has
                rc = self.proc.poll()
                how = "closed its stderr" if rc is None else f"exited with code {rc}"
                raise ServerStartError(f"{self.name} {how} before {wanted}: {self.tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LineTimeout(
                    f"{self.name} did not write {wanted} in {timeout:g} s: {self.tail()}"
                )
            self._wait_more(self._consumed, remaining)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the server's announcement; returns the port (0 for a Unix socket)."""
        m = self.wait_line(_ANNOUNCEMENT, timeout, what="the line saying where it listens")
        where = parse_announcement(m.group(0))
        if isinstance(where, str):
            self.path = where
        elif where is not None:
            self.host, self.port = where
        return self.port

    @property
    def address(self) -> tuple[str, int] | str:
        """What `socket.connect` takes: (host, port), or the Unix socket's path."""
        return self.path or (self.host, self.port)

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL if it is still there after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        return self._finish()

    def kill(self) -> int:
        """SIGKILL at once, for a test that has seen what it needed."""
        if self.proc.poll() is None:
            self._kill()
        return self._finish()

    def _kill(self) -> None:
        if self._new_session:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def _finish(self) -> int:
        self.exit_code = self.proc.returncode
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._read_log()
        self._remove_log()
        return self.exit_code

    def _remove_log(self) -> None:
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._log_path)
            self._log_path = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    name: str | None = None,
    cpu: int | None = None,
    pass_fds: Sequence[int] = (),
    log_file: bool = False,
    new_session: bool = False,
) -> ServerProcess:
    """Start `argv` and return once it announced its address; stopped again if it never does."""
    server = ServerProcess(
        argv,
        env=env,
        name=name,
        cpu=cpu,
        pass_fds=pass_fds,
        log_file=log_file,
        new_session=new_session,
    )
    try:
        server.wait_listening(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def source_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with this muxio's source first on PYTHONPATH.

    So `python -m muxio` in a child runs the same muxio as the parent, even
    from a checkout that is not installed.
    """
    env = dict(os.environ if base is None else base)
    src = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        env["PYTHONPATH"] = os.pathsep.join([src, *parts])
    return env


__all__ = [
    "LineTimeout",
    "ServerProcess",
    "ServerStartError",
    "announcement",
    "parse_announcement",
    "source_env",
    "start_server",
]
