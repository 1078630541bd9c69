"""PROXY protocol gate under hostile input: rate-limited refusals, no interface names as peers."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from helpers import ServerThread, sees_close

from muxio.proxy_protocol import ProxyProtocolError, ProxyProtocolGate, parse_header
from muxio.services.upper import UpperEcho

REFUSED = 200


def test_refusals_are_rate_limited_like_tls_handshake_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    srv = ServerThread(ProxyProtocolGate.wrap(UpperEcho)).start()
    began = time.monotonic()
    try:
        for _ in range(REFUSED):
            with srv.connect() as s:
                s.sendall(b"PROXY TCP4 1.2")  # a partial header, then EOF
                s.shutdown(socket.SHUT_WR)
                assert sees_close(s)
        assert srv.wait_for(lambda: srv.server.stats()["connections"] == REFUSED)
    finally:
        srv.stop()
    seconds = time.monotonic() - began
    lines = [r.getMessage() for r in caplog.records if "closed a connection" in r.getMessage()]
    # one line a second at most (plus the first), never one per connection
    assert 1 <= len(lines) <= 2 + seconds, (len(lines), seconds)
    assert "incomplete PROXY protocol header" in lines[0]


def test_a_gate_timeout_below_the_floor_is_refused() -> None:
    with pytest.raises(ValueError, match=r"timeout must be a number from 0\.01"):
        ProxyProtocolGate.wrap(UpperEcho, timeout=1e-9)


@pytest.mark.parametrize(
    "address",
    ["fe80::1%\x1b[31mred", "fe80::1%eth0", "fe80::1%", "fe80::1%\u0663"],
)
def test_v1_tcp6_with_a_non_numeric_scope_id_is_refused(address: str) -> None:
    line = f"PROXY TCP6 {address} ::1 1234 80\r\n".encode()
    with pytest.raises(ProxyProtocolError, match=r"not ASCII|non-numeric scope id"):
        parse_header(line)


def test_v1_tcp6_with_a_numeric_scope_id_is_taken() -> None:
    header = parse_header(b"PROXY TCP6 fe80::1%3 ::1 1234 80\r\n")
    assert header is not None
    assert header.source == ("fe80::1%3", 1234, 0, 0)
