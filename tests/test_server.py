"""Server: address families, thousands of clients, limits, and running out of fds."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import select
import signal
import socket
import time

import pytest
from helpers import (
    ServerThread,
    cpu_seconds,
    exchange,
    has_ipv6_loopback,
    raise_nofile,
    round_trip,
    running_server,
    sees_close,
    serve_process,
)

from muxio import RuntimeFailure, bind_tcp, bind_unix
from muxio.services.upper import UpperEcho

pytestmark = pytest.mark.timeout(60)


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
@pytest.mark.parametrize("poller", ["epoll", "poll"])
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
    timeout = 1.0
    with (
        running_server(UpperEcho, idle_timeout=timeout) as srv,
        srv.connect() as silent,
        srv.connect() as active,
    ):
        t0 = time.monotonic()
        assert round_trip(active, b"hi") == b"HI"
        assert srv.wait_for(lambda: len(srv.server.connections) == 2)
        closed_after = None
        n = 0
        while time.monotonic() - t0 < 3 * timeout:
            if closed_after is None:
                readable, _, _ = select.select([silent], [], [], 0.05)
                if readable:
                    assert silent.recv(10) == b""
                    closed_after = time.monotonic() - t0
            else:
                time.sleep(0.05)
            n += 1
            assert round_trip(active, b"tick %d" % n) == b"TICK %d" % n
        if closed_after is None:
            assert sees_close(silent, timeout=2 * timeout), "silent connection never closed"
            closed_after = time.monotonic() - t0
        assert timeout * 0.9 <= closed_after <= 2 * timeout + 0.3
        # the active one is still open and served
        assert round_trip(active, b"still here") == b"STILL HERE"
        assert srv.call(lambda: srv.server.stats()["idle_closed"]) == 1
        assert srv.connection_count() == 1


# -- select's FD_SETSIZE and running out of descriptors ---------------------------------


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
            # later arrivals keep being refused, and the warning is rate-limited;
            # paced (~20/s), since a tight connect loop can collide with TIME_WAIT
            wave_end = time.monotonic() + 2.2
            while time.monotonic() < wave_end:
                with sp.connect() as late:
                    assert sees_close(late, timeout=5)
                time.sleep(0.05)
            # every earlier connection still gets correct replies
            for i in served:
                msg = b"again %d" % i
                assert round_trip(clients[i], msg) == msg.upper()
            elapsed = time.monotonic() - sp.started_at
        finally:
            for c in clients:
                c.close()
        warnings = [line for line in sp.lines if "poll or epoll poller" in line]
        assert all("WARNING" in line and "epoll" in line for line in warnings)
        assert 2 <= len(warnings) <= int(elapsed) + 1, (len(warnings), elapsed)
        sp.signal(signal.SIGTERM)
        assert sp.wait(30) == 0


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
            sp.wait_line(r"WARNING cannot accept: .*descriptors are free", timeout=10)
            for i, c in enumerate(clients[:40]):
                assert round_trip(c, b"open %d" % i) == b"OPEN %d" % i
            # the listening socket stays readable; the server must not spin on it
            c0, t0 = cpu_seconds(sp.proc.pid), time.monotonic()
            time.sleep(1.0)
            c1, t1 = cpu_seconds(sp.proc.pid), time.monotonic()
            share = (c1 - c0) / (t1 - t0)
            assert share < 0.5, f"server used {c1 - c0:.2f} s CPU in {t1 - t0:.2f} s"
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
