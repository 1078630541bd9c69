"""Subprocess transports for any asyncio loop, with child watching of our own.

`asyncio.base_subprocess` already does the loop-agnostic part (pipes through
`loop.connect_read_pipe`/`connect_write_pipe`, the protocol's callbacks,
`wait()`); what a loop must add is starting the process and learning when it
exits.  asyncio's child watchers, the usual answer, are deprecated since 3.12
and gone in 3.14, so each transport watches its own child:

- a pidfd (Linux >= 5.3) in the loop's poller: it polls readable once the
  child has exited, and the loop thread then reaps it with `waitpid`;
- elsewhere (or when the kernel, a seccomp filter or the poller refuses the
  pidfd) one daemon thread per child blocks in `waitpid` and reports through
  `call_soon_threadsafe`.

Either way only the child's own pid is waited for, never -1, so children that
other code started are left alone.  Exit codes follow asyncio: the exit status,
minus the signal number for a child killed by a signal, and 255 when the
status was reaped by someone else and cannot be known.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from asyncio import SubprocessProtocol, base_subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop, Future
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    _File = int | IO[Any] | None


log = logging.getLogger("muxio")

_pidfd_open = getattr(os, "pidfd_open", None)
"""None where pidfds do not exist; the tests set it to None to run the thread path."""

_UNKNOWN_STATUS = 255


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """A child process with its stdin/stdout/stderr pipes, as asyncio's on Unix.

    The constructor is `BaseSubprocessTransport`'s, unchanged from Python
    3.10 to 3.13.  Signals go through `os.kill` and only while the child is
    unreaped, never through `Popen.send_signal`, whose `poll()` would reap
    the child behind the watcher's back (3.13's base does the same).
    """

    def get_loop(self) -> AbstractEventLoop:
        loop: AbstractEventLoop = self._loop
        return loop

    def _start(
        self,
        args: str | bytes | Sequence[str | bytes],
        shell: bool,
        stdin: _File,
        stdout: _File,
        stderr: _File,
        bufsize: int,
        **kwargs: Any,
    ) -> None:
        self._exit_waiters_only: list[Future[None]] = []
        stdin_w = None
        if stdin == subprocess.PIPE and sys.platform.startswith("aix"):
            # AIX polls the write end of a pipe readable only for sockets, and
            # the write pipe transport needs that to see the child close stdin.
            stdin, stdin_w = socket.socketpair()
        try:
            proc = subprocess.Popen(
                args,
                shell=shell,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                universal_newlines=False,
                bufsize=bufsize,
                **kwargs,
            )
            self._proc = proc
            if stdin_w is not None:
                assert isinstance(stdin, socket.socket)
                stdin.close()
                proc.stdin = open(stdin_w.detach(), "wb", buffering=bufsize)  # noqa: SIM115
                stdin_w = None
        finally:
            if stdin_w is not None:
                assert isinstance(stdin, socket.socket)
                stdin.close()
                stdin_w.close()
        try:
            self._watch(proc.pid)
        except BaseException:
            # Without a watcher nobody would ever reap it.
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise

    # -- exit watching -------------------------------------------------------

    def _watch(self, pid: int) -> None:
        if _pidfd_open is not None:
            try:
                pidfd = _pidfd_open(pid)
            except OSError as exc:  # ENOSYS, EPERM under seccomp, EMFILE
                log.debug("pidfd_open(%d) failed (%s): waiting in a thread", pid, exc)
            else:
                try:
                    self._loop.add_reader(pidfd, self._pidfd_ready, pidfd, pid)
                except (OSError, ValueError) as exc:  # e.g. select() past FD_SETSIZE
                    os.close(pidfd)
                    log.debug("cannot poll the pidfd of %d (%s): waiting in a thread", pid, exc)
                else:
                    return
        loop = self._loop
        thread = threading.Thread(
            target=_wait_in_thread,
            args=(loop, pid, self._exited),
            name=f"muxio-waitpid-{pid}",
            daemon=True,
        )
        thread.start()

    def _pidfd_ready(self, pidfd: int, pid: int) -> None:
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self._exited(_reap(pid))

    def _exited(self, returncode: int | None) -> None:
        if returncode is None:
            # Reaped elsewhere: by Popen.poll() in close(), its status then
            # known to the Popen, or by foreign code, then unknowable.
            proc = self._proc
            if proc is not None and proc.returncode is not None:
                returncode = proc.returncode
            else:
                log.warning(
                    "child process pid %d exit status already read: will report returncode 255",
                    self._pid,
                )
                returncode = _UNKNOWN_STATUS
        self._process_exited(returncode)
        for waiter in self._exit_waiters_only:
            if not waiter.done():
                waiter.set_result(None)
        self._exit_waiters_only.clear()

    async def _wait_for_exit(self) -> None:
        """Wait for the child's exit only.

        `_wait()` on 3.11+ also waits for every pipe to be closed, which never
        happens when one of them failed to connect.
        """
        if self._returncode is None:
            waiter: Future[None] = self._loop.create_future()
            self._exit_waiters_only.append(waiter)
            await waiter

    # -- signals -------------------------------------------------------------

    def send_signal(self, signal: int) -> None:
        """Signal the child if it has not been reaped yet; a no-op once it has.

        Once reaped, its pid may already belong to another process.
        """
        self._check_proc()
        proc = self._proc
        if self._returncode is not None or proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _reap(pid: int) -> int | None:
    """Reap `pid` (blocking if it still runs); None if it was reaped already."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def _wait_in_thread(
    loop: AbstractEventLoop, pid: int, report: Callable[[int | None], None]
) -> None:
    returncode = _reap(pid)
    try:
        loop.call_soon_threadsafe(report, returncode)
    except RuntimeError:  # the loop was closed while the child ran
        log.warning("loop %r closed before child process pid %d exited", loop, pid)


# -- the loop hook -------------------------------------------------------------


async def start_transport(
    loop: AbstractEventLoop,
    protocol: SubprocessProtocol,
    args: str | bytes | Sequence[str | bytes],
    shell: bool,
    stdin: _File,
    stdout: _File,
    stderr: _File,
    bufsize: int,
    extra: Any = None,
    **kwargs: Any,
) -> SubprocessTransport:
    """`_make_subprocess_transport` for any loop: start the child, return once its pipes connect.

    asyncio's own `BaseEventLoop.subprocess_exec`/`subprocess_shell` check the
    arguments and call this (muxio's loop has them as its methods).

    If that fails or the caller is cancelled meanwhile, the child is killed
    and awaited before the error propagates: no zombie is left behind.
    """
    waiter: Future[None] = loop.create_future()
    transport = SubprocessTransport(
        loop,
        protocol,
        args,
        shell,
        stdin,
        stdout,
        stderr,
        bufsize,
        waiter=waiter,
        extra=extra,
        **kwargs,
    )
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait_for_exit()
        raise
    return transport
