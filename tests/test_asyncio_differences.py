"""The asyncio differences users hit (issue 18), on asyncio's loop and muxio's side by side.

Each two-loop test asserts the same outcome for asyncio's own loop, the
reference, and for muxio's: found by running other projects' test suites
(anyio, websockets, a thread pool's) on muxio's loop.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import gc
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

import muxio
from muxio import watchdog

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


def run(loop: asyncio.AbstractEventLoop, aw: Any) -> Any:
    return loop.run_until_complete(asyncio.wait_for(aw, WAIT))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(1))
    await reader.read()
    writer.close()


# -- Server.wait_closed() and the Unix socket file ------------------------------


def test_wait_closed_follows_the_running_python(aloop: asyncio.AbstractEventLoop) -> None:
    """3.11: returns once closed, an idle client or not; 3.12.1+: waits for it too."""

    async def main() -> list[str]:
        order: list[str] = []
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await reader.readexactly(1)
        server.close()

        async def client_leaves() -> None:
            await asyncio.sleep(0)
            order.append("client closes")
            writer.close()

        task = asyncio.ensure_future(client_leaves())
        await server.wait_closed()
        order.append("wait_closed returned")
        await task
        await writer.wait_closed()
        return order

    expected = ["client closes", "wait_closed returned"]
    if sys.version_info < (3, 12, 1):
        expected.reverse()
    assert run(aloop, main()) == expected


def test_unix_server_close_follows_the_running_python(
    aloop: asyncio.AbstractEventLoop, tmp_path: Any
) -> None:
    """3.13 (`cleanup_socket`) removes the socket file at close; earlier asyncio leaves it."""
    path = os.path.join(str(tmp_path), "s.sock")

    async def main() -> None:
        server = await aloop.create_unix_server(asyncio.Protocol, path)
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()

    run(aloop, main())
    assert os.path.exists(path) == (sys.version_info < (3, 13))


def test_server_carries_asyncios_attributes() -> None:
    """websockets' test helpers read `server._ssl_context`; asyncio's others cost nothing."""
    reference = asyncio.new_event_loop()
    try:
        theirs = run(reference, reference.create_server(asyncio.Protocol, "127.0.0.1", 0))
        names = set(vars(theirs))
        theirs.close()
    finally:
        reference.close()
    loop = muxio.new_event_loop()
    try:
        server: Any = run(loop, loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
        try:
            assert {name for name in names if not hasattr(server, name)} == set()
            assert server._ssl_context is None
            assert (server._loop, server._serving, server._active_count) == (loop, True, 0)
        finally:
            server.close()
    finally:
        loop.close()


# -- debug mode ------------------------------------------------------------------


def test_debug_mode_names_the_slow_task(
    aloop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler() -> None:
        time.sleep(0.06)  # the slow step this test is about
        await asyncio.sleep(0)

    aloop.set_debug(True)
    aloop.slow_callback_duration = 0.05
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(aloop, aloop.create_task(handler(), name="slow"))
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    pattern = re.compile(
        r"Executing <Task pending name='slow' coro=<"
        r"test_debug_mode_names_the_slow_task\.<locals>\.handler\(\) running at \S+:\d+>"
        r".*> took 0\.\d{3} seconds"
    )
    assert [m for m in messages if pattern.fullmatch(m)], messages
    assert not [m for m in messages if "TaskStepMethWrapper" in m]


# -- descriptors -------------------------------------------------------------------


def test_remove_reader_and_writer_after_close_find_the_socket(
    aloop: asyncio.AbstractEventLoop,
) -> None:
    """asyncio's selector finds a closed object's registration (anyio removes it so)."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    e, f = socket.socketpair()
    try:
        aloop.add_reader(a, lambda: None)
        aloop.add_writer(c, lambda: None)
        aloop.add_reader(e.fileno(), lambda: None)
        for s in (a, c, e):
            s.close()
        assert aloop.remove_reader(a) is True
        assert aloop.remove_writer(c) is True
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            aloop.remove_reader(a)  # forgotten once nothing is registered
        with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
            aloop.remove_reader(e)  # registered by number: nothing to find it by
    finally:
        for s in (a, b, c, d, e, f):
            s.close()


def test_get_extra_info_socket_is_one_object(aloop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        server = await aloop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await aloop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        first = transport.get_extra_info("socket")
        assert first is not None
        assert transport.get_extra_info("socket") is first
        transport.close()
        server.close()
        udp, _ = await aloop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        assert udp.get_extra_info("socket") is udp.get_extra_info("socket")
        udp.close()

    run(aloop, main())


# -- timers follow loop.time() ----------------------------------------------------------


def test_timers_follow_a_patched_loop_time(aloop: asyncio.AbstractEventLoop) -> None:
    fired: list[str] = []
    with mock.patch.object(aloop, "time", return_value=1000.0):
        timer = aloop.call_later(10, fired.append, "x")
    assert timer.when() == 1010.0
    timer.cancel()
    real = aloop.time()
    with mock.patch.object(aloop, "time", return_value=real):
        aloop.call_later(3600, fired.append, "an hour later")
    with mock.patch.object(aloop, "time", return_value=real + 3601):
        aloop.call_soon(aloop.stop)
        aloop.run_forever()
    assert fired == ["an hour later"]
    assert abs(aloop.time() - time.monotonic()) < 1.0  # unpatched again


# -- a failed create_connection leaves no reference cycle (gh-124858) ---------------------


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound (so nobody else takes it) and not listening: connects are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


_FIXED_IN_ASYNCIO = (3, 12, 8) <= sys.version_info < (3, 13) or sys.version_info >= (3, 13, 1)


@pytest.mark.parametrize("delay", [None, 0.25], ids=["sequential", "happy-eyeballs"])
@pytest.mark.parametrize("all_errors", [False, True], ids=["one-error", "all-errors"])
@pytest.mark.parametrize("which", ["asyncio", "muxio"])
def test_failed_connect_leaves_no_reference_cycle(
    which: str, delay: float | None, all_errors: bool, refused_port: int
) -> None:
    too_old = not _FIXED_IN_ASYNCIO or (all_errors and sys.version_info < (3, 12))
    if which == "asyncio" and too_old:
        pytest.skip("asyncio fixed gh-124858 in 3.12.8 and 3.13.1; all_errors is 3.12+")
    if all_errors and sys.version_info < (3, 11):
        pytest.skip("all_errors needs ExceptionGroup (3.11+)")
    kwargs: dict[str, Any] = {"happy_eyeballs_delay": delay}
    if all_errors:
        kwargs["all_errors"] = True

    async def main() -> list[Any]:
        exc: BaseException | None = None
        try:
            await asyncio.open_connection("127.0.0.1", refused_port, **kwargs)
        except BaseException as group_or_error:  # not pytest.raises: it clears frames
            exc = group_or_error
            if all_errors:
                exc = group_or_error.exceptions[0]  # type: ignore[attr-defined]
        assert isinstance(exc, ConnectionRefusedError)
        return gc.get_referrers(exc)

    loop = muxio.new_event_loop() if which == "muxio" else asyncio.new_event_loop()
    gc.disable()
    try:
        assert run(loop, main()) == []
    finally:
        gc.enable()
        loop.close()


# -- the watchdog thread ----------------------------------------------------------------


def test_the_watchdog_thread_is_not_in_threading_enumerate() -> None:
    before = {t.ident for t in threading.enumerate()}
    loop = muxio.new_event_loop(slow_callback_ms=50)

    async def main() -> set[int | None]:
        await asyncio.sleep(0)
        return {t.ident for t in threading.enumerate()}

    try:
        during = run(loop, main())
        assert loop._watchdog is not None and loop._watchdog.is_alive()
    finally:
        loop.close()
    assert during == before


def test_the_watchdog_warning_leaves_no_dummy_thread(caplog: pytest.LogCaptureFixture) -> None:
    """logging's `current_thread()` would enter the thread in threading's table."""
    done = threading.Event()
    seen: list[int] = []

    def in_thread() -> None:
        seen.append(_thread.get_ident())
        watchdog._warn_unlisted("blocked for %d s", 9)
        done.set()

    with caplog.at_level(logging.WARNING, logger="muxio"):
        _thread.start_new_thread(in_thread, ())
        assert done.wait(WAIT)
    assert "blocked for 9 s" in caplog.text
    assert seen[0] not in {t.ident for t in threading.enumerate()}


# -- subprocesses: asyncio's frames, asyncio's returncode ------------------------


@pytest.mark.parametrize("how", ["exec", "shell"])
def test_popen_runs_under_asyncios_subprocess_method(
    aloop: asyncio.AbstractEventLoop, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Popen` reads its exec-error pipe blocking in the loop thread on every asyncio loop;
    blockbuster (anyio's suite) allows that read only under asyncio's own
    `base_events.subprocess_exec`/`subprocess_shell` frames."""
    stacks: list[list[tuple[str, str]]] = []
    real_init = subprocess.Popen.__init__

    def recording_init(self: subprocess.Popen[bytes], *args: Any, **kwargs: Any) -> None:
        frame = sys._getframe(1)
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append((os.path.basename(code.co_filename), code.co_name))
            frame = frame.f_back  # type: ignore[assignment]
        stacks.append(stack)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)

    async def main() -> int:
        if how == "exec":
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        else:
            proc = await asyncio.create_subprocess_shell("exit 0")
        return await proc.wait()

    assert run(aloop, main()) == 0
    assert len(stacks) == 1
    assert ("base_events.py", f"subprocess_{how}") in stacks[0]


# -- get_extra_info: asyncio's own method --------------------------------------


def test_stream_get_extra_info_is_asyncios_method(aloop: asyncio.AbstractEventLoop) -> None:
    """websockets' tests patch `asyncio.Transport.get_extra_info` and expect the patch to answer."""

    async def main() -> tuple[Any, Any, Any]:
        a, b = socket.socketpair()
        transport, _ = await aloop.create_connection(asyncio.Protocol, sock=a)
        try:
            real = transport.get_extra_info("socket")
            with mock.patch("asyncio.Transport.get_extra_info") as patched:
                patched.return_value = ("sock", 1234)
                answer = transport.get_extra_info("sockname")
            patched.assert_called_with("sockname")
            return answer, real, transport.get_extra_info("socket")
        finally:
            transport.close()
            b.close()

    answer, first, again = run(aloop, main())
    assert answer == ("sock", 1234)
    assert first is again


def test_stream_extra_info_reads_the_socket(aloop: asyncio.AbstractEventLoop) -> None:
    async def main() -> tuple[Any, Any, Any, Any]:
        server = await aloop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await aloop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        try:
            sock = transport.get_extra_info("socket")
            return (
                transport.get_extra_info("peername"),
                transport.get_extra_info("sockname"),
                sock.getsockname(),
                transport.get_extra_info("no such thing", "default"),
            )
        finally:
            transport.close()
            server.close()

    peername, sockname, real_sockname, missing = run(aloop, main())
    assert peername[0] == "127.0.0.1" and peername[1] > 0
    assert sockname == real_sockname
    assert missing == "default"


def test_a_child_killed_after_a_cancelled_wait_leaves_its_popen_reaped(
    aloop: asyncio.AbstractEventLoop,
) -> None:
    """anyio's `Process.aclose()`: wait, cancelled, then `transport.close()` kills and waits.

    The `Popen` must carry the returncode afterwards, or its `__del__` warns that
    the child "is still running" (an error under `filterwarnings = error`).
    """

    async def main() -> tuple[int, int | None]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(30)"
        )
        popen = proc._transport._proc  # type: ignore[attr-defined]
        waiting = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        proc._transport.close()  # type: ignore[attr-defined]
        return await proc.wait(), popen.returncode

    assert run(aloop, main()) == (-9, -9)
