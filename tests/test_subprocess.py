"""Subprocess transports with real children: exit codes, signals, pipes, reaping.

Every test runs on asyncio's stock loop routed through muxio.transports and
on muxio's loop (see loop_kinds); the exit-watching tests run with both
watchers, the pidfd one and the waiter thread (forced by hiding
`os.pidfd_open` from the module).  An autouse spy records every child the
transport starts (it calls the real watcher, it fakes nothing), and after
each test asserts that each one was reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from loop_kinds import WAIT, loop_fixture, run  # noqa: F401 - loop_fixture is the `loop` fixture

from muxio.transports import subprocess as msub
from muxio.transports.pipes import ReadPipeTransport, WritePipeTransport

pytestmark = pytest.mark.timeout(90)

PY = sys.executable
PIPE = subprocess.PIPE


def pidfd_works() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(fd)
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


class Child(asyncio.SubprocessProtocol):
    """Records what the transport reports, in order."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.pipe_lost: dict[int, BaseException | None] = {}
        self.transport: Any = None
        self.exited: asyncio.Future[int] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.signal_errors: list[BaseException] = []

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.out[fd] += data

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.events.append(f"pipe {fd} lost")
        self.pipe_lost[fd] = exc

    def process_exited(self) -> None:
        self.events.append("exited")
        # Exited, maybe not finished: signals must now be harmless no-ops.
        for send in (
            lambda: self.transport.send_signal(signal.SIGKILL),
            self.transport.terminate,
            self.transport.kill,
        ):
            try:
                send()
            except Exception as exc:
                self.signal_errors.append(exc)
        self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


@pytest.fixture(params=["pidfd", "thread"])
def watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pidfd":
        if not pidfd_works():
            pytest.skip("pidfd_open is not available here")
    else:
        monkeypatch.setattr(msub, "_pidfd_open", None)
    return str(request.param)


@pytest.fixture(autouse=True)
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, Any]]]:
    seen: list[tuple[int, Any]] = []
    real = msub.SubprocessTransport._watch

    def spy(self: msub.SubprocessTransport, pid: int) -> None:
        seen.append((pid, self))
        real(self, pid)

    monkeypatch.setattr(msub.SubprocessTransport, "_watch", spy)
    yield seen
    leaked = []
    for pid, _ in seen:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped, as it must be
        leaked.append(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert not leaked, f"children left unreaped: {leaked}"


def watcher_threads(pid: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"muxio-waitpid-{pid}"]


# -- exit codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("pass", 0),
        ("import sys; sys.exit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -9),
    ],
    ids=["exit-0", "exit-3", "killed-by-signal-9"],
)
def test_exit_codes_are_asyncios(
    loop: asyncio.AbstractEventLoop, watch: str, code: str, expected: int
) -> None:
    async def main() -> tuple[int, int | None, int | None]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", code)
        first = await proc.wait()
        return first, await proc.wait(), proc.returncode

    assert run(loop, main()) == (expected, expected, expected)


def test_wait_returns_although_the_child_never_read_its_stdin(
    loop: asyncio.AbstractEventLoop, watch: str
) -> None:
    # The stdin pipe must notice its reader is gone by itself: on 3.11+
    # wait() returns only once every pipe is closed.
    async def main() -> int:
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import sys; sys.exit(5)", stdin=PIPE)
        return await proc.wait()

    assert run(loop, main()) == 5


def test_protocol_sees_exit_then_pipes_then_connection_lost(
    loop: asyncio.AbstractEventLoop, watch: str
) -> None:
    code = "import sys; sys.stdout.write('out'); sys.stderr.write('err'); sys.exit(3)"

    async def main() -> Child:
        transport, proto = await loop.subprocess_exec(Child, PY, "-c", code, stdin=None)
        assert isinstance(transport, msub.SubprocessTransport)
        assert proto.events == ["made"]
        assert await proto.exited == 3
        assert await proto.lost is None
        assert transport.get_returncode() == 3
        with pytest.raises(ProcessLookupError):
            transport.send_signal(signal.SIGTERM)  # finished: asyncio's contract
        transport.close()
        return proto

    proto = run(loop, main())
    assert proto.signal_errors == [], "signals after exit must be no-ops"
    assert bytes(proto.out[1]) == b"out"
    assert bytes(proto.out[2]) == b"err"
    assert proto.events[0] == "made"
    assert proto.events[-1] == "lost"
    assert sorted(proto.events[1:-1]) == ["exited", "pipe 1 lost", "pipe 2 lost"]
    assert proto.pipe_lost == {1: None, 2: None}


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid")
def test_a_status_reaped_by_popen_poll_is_still_reported(
    loop: asyncio.AbstractEventLoop, watch: str
) -> None:
    async def main() -> int:
        transport, proto = await loop.subprocess_exec(
            Child, PY, "-c", "import sys; sys.exit(3)", stdin=None, stdout=None, stderr=None
        )
        # Let it exit without reaping it, then close(): its Popen.poll() reaps
        # before (or races with) the watcher, which must still report 3.  The
        # waiter thread may have reaped it already: then Popen.poll() fails.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, transport.get_pid(), os.WEXITED | os.WNOWAIT)
        transport.close()
        await proto.lost
        return int(transport.get_returncode())

    assert run(loop, main()) == 3


def test_a_status_reaped_by_foreign_code_is_reported_as_255(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    if not pidfd_works():
        pytest.skip("only the pidfd watcher makes this deterministic")

    async def main() -> int:
        transport, proto = await loop.subprocess_exec(
            Child, PY, "-c", "import sys; sys.exit(3)", stdin=None, stdout=None, stderr=None
        )
        os.waitpid(transport.get_pid(), 0)  # someone else's waitpid, in the loop thread
        code = await proto.exited
        transport.close()
        await proto.lost
        return code

    with caplog.at_level(logging.WARNING, logger="muxio"):
        assert run(loop, main()) == 255
    assert "will report returncode 255" in caplog.text


# -- signals -------------------------------------------------------------------

HANDLER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize(
    ("action", "expected"),
    [("send_signal", 7), ("terminate", -signal.SIGTERM), ("kill", -signal.SIGKILL)],
)
def test_signals_reach_the_child(
    loop: asyncio.AbstractEventLoop, watch: str, action: str, expected: int
) -> None:
    async def main() -> int:
        proc = await asyncio.create_subprocess_exec(PY, "-c", HANDLER, stdout=PIPE)
        try:
            assert proc.stdout is not None
            assert await proc.stdout.readline() == b"ready\n"
            threads = watcher_threads(proc.pid)
            assert len(threads) == (1 if watch == "thread" else 0)
            if action == "send_signal":
                proc.send_signal(signal.SIGUSR1)
            else:
                getattr(proc, action)()
            return await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    assert run(loop, main()) == expected


# -- pipes -----------------------------------------------------------------------

ECHO_BOTH = (
    "import sys\n"
    "data = sys.stdin.buffer.read()\n"
    "sys.stdout.buffer.write(data)\n"
    "sys.stdout.flush()\n"
    "sys.stderr.buffer.write(data[::-1])\n"
)


def test_one_mib_round_trip_through_stdin_stdout_and_stderr(
    loop: asyncio.AbstractEventLoop,
) -> None:
    payload = os.urandom(1 << 20)

    async def main() -> tuple[bytes, bytes, int | None]:
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", ECHO_BOTH, stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate(payload)
        return out, err, proc.returncode

    out, err, code = run(loop, main())
    assert code == 0
    assert out == payload
    assert err == payload[::-1]


def test_cat_round_trip_through_muxios_pipe_transports(loop: asyncio.AbstractEventLoop) -> None:
    payload = os.urandom(1 << 20)

    async def main() -> Child:
        transport, proto = await loop.subprocess_exec(Child, "cat", stderr=None)
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, WritePipeTransport)
        assert isinstance(transport.get_pipe_transport(1), ReadPipeTransport)
        assert transport.get_pipe_transport(2) is None
        stdin.write(payload)
        stdin.write_eof()
        assert await proto.lost is None
        transport.close()
        return proto

    proto = run(loop, main())
    assert proto.out[1] == payload
    assert proto.pipe_lost == {0: None, 1: None}
    assert proto.transport.get_returncode() == 0


def test_a_child_closing_stdin_breaks_the_pipe_with_data_pending(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def main() -> Child:
        transport, proto = await loop.subprocess_exec(
            Child, PY, "-c", "import os; os.read(0, 1)", stdout=None, stderr=None
        )
        stdin = transport.get_pipe_transport(0)
        stdin.write(os.urandom(4 << 20))  # far more than a pipe holds
        assert stdin.get_write_buffer_size() > 0
        await proto.lost
        transport.close()
        return proto

    proto = run(loop, main())
    assert isinstance(proto.pipe_lost[0], BrokenPipeError)
    assert proto.transport.get_returncode() == 0


def test_create_subprocess_shell_end_to_end(loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> tuple[bytes, bytes, int | None]:
        proc = await asyncio.create_subprocess_shell(
            "cat; printf err >&2; exit 4", stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate(b"in and out")
        return out, err, proc.returncode

    assert run(loop, main()) == (b"in and out", b"err", 4)


def test_subprocess_exec_works_on_a_loop_with_its_own_pipe_transports() -> None:
    # asyncio's unpatched loop: our process transport over asyncio's pipes.
    loop = asyncio.new_event_loop()
    loop._make_subprocess_transport = functools.partial(  # type: ignore[method-assign]
        msub.start_transport, loop
    )
    payload = os.urandom(200_000)

    async def main() -> Child:
        transport, proto = await loop.subprocess_exec(Child, "cat", stderr=None)
        transport.get_pipe_transport(0).write(payload)
        transport.get_pipe_transport(0).close()
        await proto.lost
        transport.close()
        return proto

    try:
        proto = run(loop, main())
    finally:
        loop.close()
    assert proto.out[1] == payload
    assert proto.transport.get_returncode() == 0


# -- many children, failures, cancellation -----------------------------------------


def test_many_short_lived_children_are_all_reaped_without_leaking_fds(
    loop: asyncio.AbstractEventLoop, watch: str, spawned: list[tuple[int, Any]]
) -> None:
    count = 100

    async def one(i: int) -> tuple[int | None, bytes]:
        if i % 2:
            proc = await asyncio.create_subprocess_exec("sh", "-c", f"exit {i}")
            return await proc.wait(), b""
        proc = await asyncio.create_subprocess_exec("sh", "-c", f"echo {i}; exit {i}", stdout=PIPE)
        out, _ = await proc.communicate()
        return proc.returncode, out

    async def main() -> tuple[list[tuple[int | None, bytes]], int, int]:
        before = open_fds()
        results = await asyncio.gather(*(one(i) for i in range(count)))
        return results, before, open_fds()

    results, before, after = run(loop, main(), timeout=60)
    assert results == [(i, b"" if i % 2 else f"{i}\n".encode()) for i in range(count)]
    assert len(spawned) == count
    assert after == before, "pipes or pidfds leaked"


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("subprocess_exec", ["true"], {"universal_newlines": True}),
        ("subprocess_exec", ["true"], {"shell": True}),
        ("subprocess_exec", ["true"], {"bufsize": 1}),
        ("subprocess_exec", ["true"], {"text": True}),
        ("subprocess_exec", ["true"], {"encoding": "utf-8"}),
        ("subprocess_exec", ["true"], {"errors": "strict"}),
        ("subprocess_exec", ["true"], {"shell": True, "universal_newlines": True}),
        ("subprocess_shell", [["true"]], {}),
        ("subprocess_shell", ["true"], {"universal_newlines": True}),
        ("subprocess_shell", ["true"], {"shell": False}),
        ("subprocess_shell", ["true"], {"bufsize": -1}),
        ("subprocess_shell", ["true"], {"text": True}),
        ("subprocess_shell", ["true"], {"encoding": "utf-8"}),
        ("subprocess_shell", ["true"], {"errors": "strict"}),
    ],
)
def test_argument_validation_is_asyncios(
    loop: asyncio.AbstractEventLoop, method: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    def factory() -> asyncio.SubprocessProtocol:
        raise AssertionError("protocol_factory called although the arguments are invalid")

    stock = asyncio.new_event_loop()
    try:
        with pytest.raises(Exception) as theirs:
            stock.run_until_complete(getattr(stock, method)(factory, *args, **kwargs))
    finally:
        stock.close()
    with pytest.raises(Exception) as ours:
        run(loop, getattr(loop, method)(factory, *args, **kwargs))
    assert type(ours.value) is type(theirs.value) is ValueError
    assert str(ours.value) == str(theirs.value)


def test_a_program_that_cannot_start_raises_and_leaks_nothing(
    loop: asyncio.AbstractEventLoop, spawned: list[tuple[int, Any]]
) -> None:
    async def main() -> tuple[int, int]:
        before = open_fds()
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program", stdin=PIPE, stdout=PIPE)
        return before, open_fds()

    before, after = run(loop, main())
    assert after == before
    assert spawned == []


def test_cancelling_the_start_kills_and_reaps_the_child(
    loop: asyncio.AbstractEventLoop, watch: str, spawned: list[tuple[int, Any]]
) -> None:
    async def main() -> int | None:
        task = asyncio.ensure_future(
            loop.subprocess_exec(Child, PY, "-c", "import time; time.sleep(60)")
        )
        while not spawned:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        _, transport = spawned[0]
        return transport.get_returncode()  # type: ignore[no-any-return]

    assert run(loop, main()) == -signal.SIGKILL


def test_a_pipe_that_fails_to_connect_fails_the_start_and_the_child_is_reaped(
    loop: asyncio.AbstractEventLoop,
    watch: str,
    spawned: list[tuple[int, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault injection: no real pipe refuses to connect on demand.
    async def failing(protocol_factory: Any, pipe: Any) -> Any:
        raise OSError(errno.EMFILE, "injected: too many open files")

    monkeypatch.setattr(loop, "connect_read_pipe", failing)

    async def main() -> int | None:
        with pytest.raises(OSError, match="injected"):
            await loop.subprocess_exec(Child, PY, "-c", "import time; time.sleep(60)")
        _, transport = spawned[0]
        return transport.get_returncode()  # type: ignore[no-any-return]

    assert run(loop, main()) == -signal.SIGKILL
    popen = spawned[0][1].get_extra_info("subprocess")
    for pipe in (popen.stdin, popen.stdout, popen.stderr):
        pipe.close()  # the ones no transport took over, left to the caller as in asyncio


def test_the_waiter_thread_reaps_a_child_that_outlives_its_loop(
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(msub, "_pidfd_open", None)

    async def main() -> Any:
        transport, _ = await loop.subprocess_exec(
            Child, PY, "-c", "import time; time.sleep(60)", stdin=None, stdout=None, stderr=None
        )
        return transport

    transport = run(loop, main())
    loop.close()
    pid = transport.get_pid()
    (thread,) = watcher_threads(pid)
    with caplog.at_level(logging.WARNING, logger="muxio"):
        os.kill(pid, signal.SIGKILL)
        thread.join(WAIT)
    assert not thread.is_alive()
    assert f"closed before child process pid {pid} exited" in caplog.text
    transport.close()
    # The autouse fixture asserts the child was reaped.
