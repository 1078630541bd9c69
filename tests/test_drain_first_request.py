"""A drain answers the first request of a connection accepted just before it.

`Server.shutdown(first_request_grace=)` is what `muxio serve` drains with on
SIGTERM (and so what a reload's old worker does): without it, a connection
accepted a moment before the drain is closed with its first request unread,
and the client cannot tell that from a request read and dropped.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers import recv_exactly, recv_until_eof, round_trip, running_server


def test_a_connection_that_sent_nothing_yet_gets_its_first_request_answered() -> None:
    with running_server() as srv:
        quiet = srv.connect()
        talking = srv.connect()
        assert round_trip(talking, b"first") == b"FIRST"
        assert srv.wait_for(lambda: len(srv.server.connections) == 2)
        closed = threading.Event()
        srv.call(lambda: srv.server.shutdown(10.0, closed.set, first_request_grace=5.0))
        with pytest.raises(ConnectionRefusedError):
            srv.connect()  # accepting stopped at once
        talking.sendall(b"again")  # it had spoken: its reading stopped, this is never read
        quiet.sendall(b"late")
        assert recv_exactly(quiet, 4) == b"LATE"
        assert recv_until_eof(quiet) == b""
        assert recv_until_eof(talking) == b""
        assert closed.wait(10)
        quiet.close()
        talking.close()


def test_a_connection_that_never_sends_holds_the_drain_only_for_the_grace() -> None:
    with running_server() as srv:
        silent = srv.connect()
        assert srv.wait_for(lambda: len(srv.server.connections) == 1)
        closed = threading.Event()
        began = time.monotonic()
        srv.call(lambda: srv.server.shutdown(10.0, closed.set, first_request_grace=0.3))
        assert recv_until_eof(silent, timeout=5) == b""
        assert closed.wait(5)  # well before the 10 s shutdown timeout
        assert time.monotonic() - began >= 0.3  # never early: the grace was given
        silent.close()


def test_with_no_connection_waiting_it_is_a_plain_shutdown() -> None:
    with running_server() as srv:
        c = srv.connect()
        assert round_trip(c, b"x") == b"X"
        closed = threading.Event()
        srv.call(lambda: srv.server.shutdown(30.0, closed.set, first_request_grace=20.0))
        assert recv_until_eof(c, timeout=10) == b""
        assert closed.wait(10)  # the 20 s grace was not waited for
        c.close()
