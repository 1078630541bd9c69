"""One way to start a server process and learn its port, for compare, tests and benchmarks."""

from __future__ import annotations

import socket
import sys

import pytest

from muxio.tools.process import (
    ServerProcess,
    ServerStartError,
    announcement,
    parse_announcement,
    start_server,
)

MUXIO_SERVE = [sys.executable, "-m", "muxio", "serve"]


@pytest.mark.timeout(30)
def test_start_server_learns_the_port_muxio_serve_picked() -> None:
    with start_server([*MUXIO_SERVE, "--port", "0"]) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        assert server.address == ("127.0.0.1", server.port)
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(64):
                reply += chunk
        assert reply == b"PING"
        assert any("listening on" in line for line in server.lines)
    assert server.exit_code == 0  # SIGTERM: a graceful stop
    assert any("shutdown complete" in line for line in server.lines)


@pytest.mark.timeout(30)
def test_stderr_to_a_file_learns_the_port_too() -> None:
    argv = [sys.executable, "-m", "muxio.tools.peers.threads", "--port", "0"]
    with start_server(argv, log_file=True) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"x")
            assert sock.recv(1) == b"X"
        assert server.lines == [announcement("127.0.0.1", server.port)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("log_file", [False, True], ids=["pipe", "file"])
def test_a_server_that_exits_before_listening_is_an_error_with_its_stderr(
    log_file: bool,
) -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('cannot read config.toml: no such file')"]
    with pytest.raises(
        ServerStartError,
        match=r"exited with code 1 before the line saying where it listens: cannot read config",
    ):
        start_server(argv, log_file=log_file)


@pytest.mark.timeout(30)
def test_a_server_that_never_announces_is_an_error_and_is_stopped() -> None:
    code = "import sys, time; print('warming up', file=sys.stderr, flush=True); time.sleep(60)"
    server = ServerProcess([sys.executable, "-c", code])
    with pytest.raises(
        ServerStartError,
        match=r"did not write the line saying where it listens in 0\.5 s: warming up",
    ):
        server.wait_listening(timeout=0.5)
    assert server.stop() != 0  # SIGTERM ended it; it had not exited on its own
    assert not server.alive()


def test_announcement_forms() -> None:
    assert parse_announcement("muxio INFO listening on 127.0.0.1:8080 (poller epoll)") == (
        "127.0.0.1",
        8080,
    )
    assert parse_announcement("listening on [::1]:9000, 127.0.0.1:9000 (poller") == ("::1", 9000)
    assert parse_announcement("listening on /run/muxio.sock (poller epoll") == "/run/muxio.sock"
    assert parse_announcement("supervisor (pid 7) on 127.0.0.1:81: 2 workers") == ("127.0.0.1", 81)
    assert parse_announcement("--host 0.0.0.0 listens on every network interface") is None
    for host in ("127.0.0.1", "::1", "localhost"):
        assert parse_announcement(announcement(host, 5)) == (host, 5)
