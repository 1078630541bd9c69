"""Shared, generic fixtures for muxio's tests.

Every fixture here cleans up after itself and bounds whatever it runs, so a
broken loop fails a test instead of hanging the session.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from muxio.loop import EventLoop


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets over loopback: (client, server side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    client.settimeout(None)
    return client, server


@pytest.fixture
def tcp_socketpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP loopback pair, closed after the test."""
    a, b = tcp_pair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """A fresh EventLoop on the best poller, closed after the test."""
    lp = EventLoop()
    try:
        yield lp
    finally:
        if not lp.is_running():
            lp.close()


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
