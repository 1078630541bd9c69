"""Server: address families, thousands of clients, limits, and running out of fds."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import select
import signal
import socket
import time

import pytest
from helpers import (
    ServeProcess,
    ServerThread,
    exchange,
    has_ipv6_loopback,
    raise_nofile,
    round_trip,
    running_server,
    sees_close,
    serve_process,
)

from muxio import RuntimeFailure, bind_tcp, bind_unix
from muxio.pollers import BACKENDS, available
from muxio.services.upper import UpperEcho

pytestmark = pytest.mark.timeout(60)

UNLIMITED_POLLERS = [name for name in available() if BACKENDS[name].max_fd is None]
"""Every poller here that can watch 2,000 descriptors: all but select."""


def check_echo(srv: ServerThread) -> None:
    with srv.connect() as sock:
        assert round_trip(sock, b"hello, muxio") == b"HELLO, MUXIO"
        data = os.urandom(300_000)
        assert exchange(sock, data, timeout=20) == data.upper()


# -- address families -----------------------------------------------------------


def test_ipv4() -> None:
    with running_server(UpperEcho, sockets=bind_tcp("127.0.0.1", 0)) as srv:
        assert srv.family == socket.AF_INET
        assert srv.server.addresses == [f"127.0.0.1:{srv.port}"]
        check_echo(srv)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")
def test_ipv6() -> None:
    with running_server(UpperEcho, sockets=bind_tcp("::1", 0)) as srv:
        assert srv.family == socket.AF_INET6
        assert srv.server.addresses == [f"[::1]:{srv.port}"]
        check_echo(srv)


def test_unix_socket_served_and_removed_at_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "muxio.sock"
    srv = ServerThread(UpperEcho, sockets=bind_unix(str(path))).start()
    try:
        assert srv.family == socket.AF_UNIX
        assert path.is_socket()
        check_echo(srv)
    finally:
        srv.stop()
    assert not path.exists()


def test_unix_socket_replaces_a_stale_socket_but_not_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, as after a crash
    with running_server(UpperEcho, sockets=bind_unix(str(path))) as srv:
        check_echo(srv)
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(RuntimeFailure, match="not a socket"):
        bind_unix(str(regular))
    assert regular.read_text() == "keep me"


# -- thousands of clients ------------------------------------------------------------


async def many_clients(srv: ServerThread, n: int) -> None:
    host, port = srv.address[0], srv.port
    gate = asyncio.Semaphore(400)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            return await asyncio.open_connection(host, port)

    conns = await asyncio.wait_for(asyncio.gather(*(connect() for _ in range(n))), 60)
    try:
        # every client is connected and accepted before any sends or closes
        ok = await asyncio.to_thread(srv.wait_for, lambda: len(srv.server.connections) == n, 30)
        assert ok, f"server holds {srv.connection_count()} of {n} connections"

        async def talk(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            payload = (f"client {i:05d} ".encode() + os.urandom(1024))[:1024]
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(1024) == payload.upper()

        await asyncio.wait_for(
            asyncio.gather(*(talk(i, r, w) for i, (r, w) in enumerate(conns))), 60
        )
        assert srv.connection_count() == n
    finally:
        for _, w in conns:
            w.close()
    assert await asyncio.to_thread(srv.wait_for, lambda: not srv.server.connections, 30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("poller", UNLIMITED_POLLERS, ids=str)
def test_2000_concurrent_clients(poller: str) -> None:
    n = 2000
    if raise_nofile() < 2 * n + 100:
        pytest.skip("RLIMIT_NOFILE hard limit too low for 2,000 clients in one process")
    sockets = bind_tcp("127.0.0.1", 0, backlog=4096)
    with running_server(UpperEcho, poller=poller, sockets=sockets) as srv:
        assert srv.loop.poller.name == poller
        asyncio.run(many_clients(srv, n))
        assert srv.call(lambda: srv.server.stats()["connections"]) == n


# -- limits -----------------------------------------------------------------------


def test_max_connections_refuses_extra_and_keeps_existing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="muxio")
    with running_server(UpperEcho, max_connections=5) as srv:
        clients = []
        try:
            for i in range(5):
                clients.append(srv.connect())
                assert round_trip(clients[-1], f"client {i}".encode()) == f"CLIENT {i}".encode()
            assert srv.connection_count() == 5
            for _ in range(3):
                with srv.connect() as extra:
                    assert sees_close(extra, timeout=5), "an extra connection was kept open"
            stats = srv.call(srv.server.stats)
            # each counter counts one thing: the refused are not among the connections
            assert (stats["connections"], stats["refused"], stats["open"]) == (5, 3, 5)
            for i, c in enumerate(clients):
                assert round_trip(c, f"still {i}".encode()) == f"STILL {i}".encode()
            assert srv.connection_count() == 5
            # a freed slot is used again
            clients.pop().close()
            assert srv.wait_for(lambda: len(srv.server.connections) == 4)
            clients.append(srv.connect())
            assert round_trip(clients[-1], b"new") == b"NEW"
        finally:
            for c in clients:
                c.close()
    refused = [r for r in caplog.records if "max_connections limit" in r.getMessage()]
    assert refused and all(r.levelno == logging.WARNING for r in refused)


def test_idle_timeout_closes_silent_connections_only() -> None:
    """A client that keeps talking outlives a silent one; silent in its turn, it goes too.

    The silent client's close is the event that says `idle_timeout` has passed;
    by then the active client, connected at the same moment, has talked through
    all of it.  How long the server took is not measured, only that it never
    closes a connection before it has been silent for `idle_timeout`.
    """
    timeout = 1.0
    with running_server(UpperEcho, idle_timeout=timeout) as srv:
        before = time.monotonic()
        with srv.connect() as silent, srv.connect() as active:
            assert srv.wait_for(lambda: len(srv.server.connections) == 2)
            deadline = before + 20 * timeout
            n = 0
            while not select.select([silent], [], [], 0.05)[0]:
                assert time.monotonic() < deadline, "the silent connection was never closed"
                n += 1
                assert round_trip(active, b"tick %d" % n) == b"TICK %d" % n
            assert sees_close(silent), "the silent connection got data instead of a close"
            assert time.monotonic() - before >= timeout, "closed before it was idle long enough"
            # the active one is still open and served
            assert round_trip(active, b"still here") == b"STILL HERE"
            assert srv.call(lambda: srv.server.stats()["idle_closed"]) == 1
            assert srv.connection_count() == 1
            # now silent too, the active one is closed in its turn, for the same reason
            assert sees_close(active, timeout=20 * timeout), "a silent connection stayed open"
            assert srv.wait_for(lambda: not srv.server.connections)
            assert srv.call(lambda: srv.server.stats()["idle_closed"]) == 2


# -- select's FD_SETSIZE and running out of descriptors ---------------------------------


MORE = re.compile(r"\((\d+) more since the last warning\)")


def fd_warnings(sp: ServeProcess) -> list[str]:
    """The server's warnings that it closed connections past select's FD_SETSIZE."""
    return [line for line in sp.lines if "poll or epoll poller" in line]


@pytest.mark.timeout(120)
def test_select_poller_refuses_descriptors_past_fd_setsize() -> None:
    if raise_nofile(4096) < 2400:
        pytest.skip("RLIMIT_NOFILE hard limit too low")
    n = 1100
    with serve_process("--poller", "select", "--port", "0", "--backlog", "2048") as sp:
        clients: list[socket.socket] = []
        try:
            for _ in range(n):
                clients.append(sp.connect())
            served: list[int] = []
            refused: list[int] = []
            for i, c in enumerate(clients):
                msg = b"fd check %d" % i
                try:
                    c.sendall(msg)
                    reply = c.recv(len(msg))
                except ConnectionResetError:
                    reply = b""
                if reply:
                    # a short read is possible in theory; finish it
                    while len(reply) < len(msg):
                        more = c.recv(len(msg) - len(reply))
                        assert more
                        reply += more
                    assert reply == msg.upper()
                    served.append(i)
                else:
                    refused.append(i)
            k = len(served)
            assert served == list(range(k)), "served connections are not the earliest ones"
            assert 900 <= k < 1024
            assert refused == list(range(k, n))
            # later arrivals keep being refused, and warned about again (the
            # warning comes at most once a second, counting the rest); paced,
            # since a tight connect loop can collide with TIME_WAIT
            late = 0
            deadline = time.monotonic() + 30
            while len(fd_warnings(sp)) < 2:
                assert time.monotonic() < deadline, f"no second warning: {sp.lines[-5:]}"
                with sp.connect() as arrival:
                    assert sees_close(arrival, timeout=5)
                late += 1
                time.sleep(0.05)
            # every earlier connection still gets correct replies
            for i in served:
                msg = b"again %d" % i
                assert round_trip(clients[i], msg) == msg.upper()
        finally:
            for c in clients:
                c.close()
        warnings = fd_warnings(sp)
        assert all("WARNING" in line and "epoll" in line for line in warnings)
        # rate-limited: not one line per refusal, and the lines account for no more
        suppressed = [int(m.group(1)) for m in map(MORE.search, warnings) if m]
        assert sum(suppressed) >= 1, warnings
        assert len(warnings) + sum(suppressed) <= len(refused) + late
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


CANNOT_ACCEPT = r"WARNING cannot accept: .*descriptors are free(?:.*\((?P<more>\d+) more)?"


@pytest.mark.timeout(90)
def test_out_of_descriptors_pauses_accepting_without_spinning() -> None:
    with serve_process("--port", "0") as sp:
        # the server is up with a handful of descriptors; now it may have 64 at most
        _, hard = resource.prlimit(sp.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(sp.proc.pid, resource.RLIMIT_NOFILE, (64, hard))
        clients: list[socket.socket] = []
        try:
            for _ in range(100):
                clients.append(sp.connect())
            sp.wait_line(CANNOT_ACCEPT, timeout=10)
            for i, c in enumerate(clients[:40]):
                assert round_trip(c, b"open %d" % i) == b"OPEN %d" % i
            # The listening socket stays readable, with clients waiting: a server
            # spinning on it would fail thousands of accepts between two warnings
            # (one a second at most, counting the rest); a paused one retries now
            # and then.
            again = sp.wait_line(CANNOT_ACCEPT, timeout=15)
            failed_between = int(again.group("more") or 0)
            assert failed_between <= 10, f"{failed_between} accepts failed in between: spinning"
            for i, c in enumerate(clients[:40]):
                assert round_trip(c, b"still %d" % i) == b"STILL %d" % i
            # free descriptors: the waiting clients are accepted and served
            for c in clients[:60]:
                c.close()
            for i, c in enumerate(clients[60:], 60):
                assert round_trip(c, b"late %d" % i, timeout=15) == b"LATE %d" % i
            with sp.connect() as new:
                assert round_trip(new, b"new") == b"NEW"
        finally:
            for c in clients:
                c.close()
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0
        assert not any("Traceback" in line for line in sp.lines)


def test_server_stats_is_a_snapshot_with_the_documented_keys() -> None:
    with running_server(UpperEcho) as srv:
        taken = srv.call(srv.server.stats)
        with srv.connect() as conn:
            assert round_trip(conn, b"abc") == b"ABC"
            later = srv.call(srv.server.stats)
    assert taken == {
        "connections": 0, "refused": 0, "open": 0, "idle_closed": 0,
        "bytes_in": 0, "bytes_out": 0, "tls_handshakes_failed": 0,
    }
    assert (later["connections"], later["open"], later["bytes_in"], later["bytes_out"]) == (
        1, 1, 3, 3
    )
