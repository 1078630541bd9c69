"""Issue 11: what a hostile client or a careless operator could do to a server.

Each test pins one edge: memory a client can grow, work for clients that
left, signals and shutdown, Unix sockets, user errors, log injection and
the watchdog.  Real sockets, real processes and real signals throughout.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import socket
import struct
import weakref
from collections.abc import Iterator

import pytest
from helpers import (
    ServerThread,
    recv_exactly,
    recv_until_eof,
    round_trip,
    running_server,
    send_until_blocked,
    serve_process,
)

from muxio.offload import Mode, Offloader
from muxio.services.upper import UpperEcho
from muxio.services.work import WorkService, WorkServiceFactory

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


# -- 2. a work client that never reads cannot grow the server ---------------------


@contextlib.contextmanager
def work_server(
    mode: Mode = "threads", workers: int = 1, **factory_kwargs: int
) -> Iterator[tuple[ServerThread, Offloader]]:
    off = Offloader(mode, max_workers=workers, preload=("muxio.services.work",))
    srv = ServerThread(WorkServiceFactory(off, **factory_kwargs))
    off.start(srv.loop)
    try:
        srv.start()
        yield srv, off
    finally:
        srv.stop()
        off.close(timeout=0)


def held_bytes(srv: ServerThread) -> int:
    """What the server holds for its connections: input, queued replies, write buffers."""
    total = 0
    for transport in srv.server.connections:
        protocol = transport.get_protocol()
        assert isinstance(protocol, WorkService)
        queued = sum(len(slot.data or b"") for slot in protocol.replies._queue)
        total += len(protocol._buffer) + queued + transport.get_write_buffer_size()
    return total


def stalled(srv: ServerThread) -> bool:
    return bool(srv.server.connections) and not any(
        t.is_reading() for t in srv.server.connections
    )


LONG_LINE = b"a" * (64 * 1024 - 1) + b"\n"


def test_replies_queued_behind_work_count_against_flow_control() -> None:
    with work_server() as (srv, _off), srv.connect() as sock:
        send_until_blocked(sock, b"work 1500\n" + LONG_LINE * 63, stall=0.5)
        assert srv.wait_for(lambda: stalled(srv))
        held = srv.call(held_bytes, srv)
        assert held < 256 * 1024, f"one non-reading client made the server hold {held} bytes"


def test_a_connection_not_being_read_notices_its_peer_reset() -> None:
    with work_server() as (srv, off):
        sock = srv.connect()
        send_until_blocked(sock, b"work 5000\n" + LONG_LINE * 63, stall=0.3)
        assert srv.wait_for(lambda: stalled(srv) and off.pending >= 1)
        rst_close(sock)
        # the job takes 5 s; the reset must be noticed long before it ends
        assert srv.wait_for(lambda: not srv.server.connections, timeout=3.0)


# -- 3. work for clients that left; fairness between clients ------------------------


def test_queued_work_of_a_client_that_closed_never_starts() -> None:
    with work_server() as (srv, off):
        with srv.connect() as gone:
            gone.sendall(b"work 200\n" * 20)
            assert srv.wait_for(lambda: off.pending >= 1)
        with srv.connect() as new:
            new.sendall(b"work 0\n")
            assert recv_exactly(new, 7, timeout=10) == b"WORK 0\n"
        # the first job ran; its reply met a reset, and the other 19 never started
        assert off.stats.submitted <= 3, off.stats


def test_one_client_cannot_hold_every_worker() -> None:
    with work_server(workers=2) as (srv, off), srv.connect() as greedy, srv.connect() as other:
        greedy.sendall(b"work 500\n" * 10)
        assert srv.wait_for(lambda: off.pending >= 1)
        other.sendall(b"work 0\n")
        assert recv_exactly(other, 7, timeout=10) == b"WORK 0\n"
        # answered without waiting behind the greedy client's queue
        assert srv.call(lambda: off.stats.completed) <= 2


def test_max_jobs_per_connection_lets_one_client_use_more_workers() -> None:
    with work_server(workers=2, max_jobs=2) as (srv, off), srv.connect() as sock:
        sock.sendall(b"work 300\n" * 4)
        assert srv.wait_for(lambda: off.running == 2)
        assert recv_exactly(sock, 9 * 4, timeout=10) == b"WORK 300\n" * 4


@pytest.mark.timeout(90)
def test_a_running_process_job_of_a_client_that_left_is_abandoned() -> None:
    with work_server("processes") as (srv, off):
        gone = srv.connect()
        gone.sendall(b"work 10000\n")
        assert srv.wait_for(lambda: off.pending == 1)
        rst_close(gone)
        assert srv.wait_for(lambda: off.stats.pools_replaced == 1, timeout=5)
        with srv.connect() as new:
            new.sendall(b"work 0\n")
            # the abandoned job had 10 s to go: the fresh pool answers long before
            assert recv_exactly(new, 7, timeout=8) == b"WORK 0\n"
        assert off.stats.abandoned == 1


# -- 5. shutdown does not wait for a client that neither sends nor closes -----------


def test_shutdown_closes_an_idle_connection_at_once() -> None:
    with serve_process("--port", "0", "--shutdown-timeout", "10") as sp, sp.connect() as idle:
        assert round_trip(idle, b"hi") == b"HI"
        sp.signal(signal.SIGTERM)
        # a well-behaved client sees EOF, and the server does not wait 10 s for it
        assert recv_until_eof(idle, timeout=5) == b""
        assert sp.wait(timeout=5) == 0
        assert "aborting" not in "\n".join(sp.lines)
