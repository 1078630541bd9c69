"""Issue 11: what a hostile client or a careless operator could do to a server.

Each test pins one edge: memory a client can grow, work for clients that
left, signals and shutdown, Unix sockets, user errors, log injection and
the watchdog.  Real sockets, real processes and real signals throughout.
"""

from __future__ import annotations

import gc
import socket
import struct
import weakref

import pytest
from helpers import running_server

from muxio.services.upper import UpperEcho

pytestmark = pytest.mark.timeout(60)


def rst_close(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as an RST storm does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- 1. closed connections cost nothing, even with --idle-timeout -----------------


class TrackedEcho(UpperEcho):
    """UpperEcho that can be weakly referenced (its base has __slots__)."""


def test_closed_connections_are_freed_with_a_long_idle_timeout() -> None:
    alive: list[weakref.ref[TrackedEcho]] = []

    def factory() -> TrackedEcho:
        protocol = TrackedEcho()
        alive.append(weakref.ref(protocol))
        return protocol

    with running_server(factory, idle_timeout=3600) as srv:
        for _ in range(50):
            sock = srv.connect()
            sock.sendall(b"x")
            assert sock.recv(1) == b"X"
            rst_close(sock)
        assert srv.wait_for(lambda: not srv.server.connections)
        held = srv.call(lambda: (gc.collect(), sum(r() is not None for r in alive))[1])
        assert len(alive) == 50
        assert held == 0, f"{held} closed connections are still held in memory"
