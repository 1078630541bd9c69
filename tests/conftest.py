"""Shared, generic fixtures for muxio's tests.

Every fixture here cleans up after itself and bounds whatever it runs, so a
broken loop fails a test instead of hanging the session.

`poller` runs a test once per mechanism this OS provides (epoll, poll and
select on Linux; kqueue, poll and select on macOS): one missing here is not
listed at all, so a skip always means something.  A test or module that is
about something other than the poller pins it by overriding the fixture
(`def poller() -> str: return BEST_POLLER` in that module), so tests that take
no poller at all live beside it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from muxio import _build, pollers
from muxio.loop import EventLoop
from muxio.policy import new_event_loop


def pytest_report_header(config: pytest.Config) -> str:
    """Which build the tests run on, so a log says what it tested."""
    return f"muxio: {_build.describe()} build, from {_build.PACKAGE_DIR}"


def pytest_sessionstart(session: pytest.Session) -> None:
    if (wrong := _build.expectation_error()) is not None:
        pytest.exit(wrong, returncode=1)


BEST_POLLER = pollers.available()[0]
"""What `auto` picks here: the poller a test that does not care about pollers runs on."""

SocketPair = tuple[socket.socket, socket.socket]
MakeSocketPair = Callable[..., SocketPair]


@pytest.fixture(params=pollers.available(), ids=str)
def poller(request: pytest.FixtureRequest) -> str:
    """The name of each poller this OS provides, in turn."""
    return str(request.param)


@pytest.fixture
def loop(poller: str) -> Iterator[EventLoop]:
    """A fresh muxio loop on `poller`, the thread's current loop, closed after the test.

    Its watchdog is off: on a loaded machine any iteration may be slow, and a
    warning about it must not reach a test that counts log records.  The
    watchdog's own tests make their own loops.
    """
    lp = EventLoop(poller, slow_callback_ms=None)
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        asyncio.set_event_loop(None)
        if not lp.is_running() and not lp.is_closed():
            lp.run_until_complete(lp.shutdown_default_executor())
            lp.close()


def connected_pair(kind: str = "unix", *, blocking: bool = False) -> SocketPair:
    """Two connected stream sockets: an AF_UNIX socketpair, or ("tcp") over 127.0.0.1."""
    if kind == "unix":
        a, b = socket.socketpair()
    elif kind == "tcp":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            a = socket.create_connection(listener.getsockname(), timeout=5)
            b, _ = listener.accept()
    else:
        raise ValueError(f"unknown socket pair kind {kind!r} (unix or tcp)")
    a.setblocking(blocking)
    b.setblocking(blocking)
    return a, b


@pytest.fixture
def make_socket_pair() -> Iterator[MakeSocketPair]:
    """`make_socket_pair(kind="unix", blocking=False)`: a connected pair, closed after the test."""
    made: list[SocketPair] = []

    def make(kind: str = "unix", *, blocking: bool = False) -> SocketPair:
        pair = connected_pair(kind, blocking=blocking)
        made.append(pair)
        return pair

    try:
        yield make
    finally:
        for a, b in made:
            a.close()
            b.close()


@pytest.fixture
def socket_pair(make_socket_pair: MakeSocketPair) -> SocketPair:
    """A connected, non-blocking AF_UNIX socket pair, closed after the test."""
    return make_socket_pair()


@pytest.fixture
def tcp_pair(make_socket_pair: MakeSocketPair) -> SocketPair:
    """A connected, non-blocking TCP pair over 127.0.0.1, closed after the test."""
    return make_socket_pair("tcp")


RunLoop = Callable[..., None]


@pytest.fixture
def run_loop() -> RunLoop:
    """`run_loop(loop, timeout=5.0)`: run_forever, but fail if not stopped in time.

    The safety timer is a loop timer, so it fires only while the loop is
    iterating; tests whose loop might block in a callback also carry a
    pytest timeout.
    """

    def run(lp: EventLoop, timeout: float = 5.0) -> None:
        expired: list[bool] = []

        def safety() -> None:
            expired.append(True)
            lp.stop()

        handle = lp.call_later(timeout, safety)
        try:
            lp.run_forever()
        finally:
            handle.cancel()
        if expired:
            pytest.fail(f"the loop was not stopped within {timeout} s")

    return run


@pytest.fixture(params=["asyncio", "muxio"])
def aloop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """asyncio's own loop and muxio's, side by side: where muxio must behave as asyncio."""
    lp: asyncio.AbstractEventLoop = (
        new_event_loop() if request.param == "muxio" else asyncio.new_event_loop()
    )
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture(scope="session")
def ca() -> Any:
    """A test certificate authority (trustme), one per run: issuing is the slow part."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def server_ctx(ca: Any) -> ssl.SSLContext:
    """A server context with a certificate for localhost and 127.0.0.1, signed by `ca`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_ctx(ca: Any) -> ssl.SSLContext:
    """A client context that trusts `ca`."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
