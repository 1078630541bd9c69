"""Handed-in listening sockets: systemd socket activation and `--fd N`, with real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServeProcess, round_trip

MUXIO = [sys.executable, "-m", "muxio"]


class HandedIn(ServeProcess):
    """`muxio serve` started with extra descriptors and environment, as a service manager does."""

    def __init__(self, cmd: list[str], *, pass_fds: tuple[int, ...], env: dict[str, str]) -> None:
        super().__init__(argv=cmd, pass_fds=pass_fds, env={**os.environ, **env})


LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def systemd_style(sock: socket.socket, *args: str, names: str = "web") -> HandedIn:
    """Start `muxio serve` as systemd does: the socket as fd 3, LISTEN_PID its own pid.

    systemd sets these between fork and exec; the launcher does the same
    and `exec`s, so the pid it writes is the one muxio has.
    """
    return HandedIn(
        [sys.executable, "-c", LAUNCHER, str(sock.fileno()), "-m", "muxio", "serve", *args],
        pass_fds=(sock.fileno(),),
        env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": names},
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def test_systemd_socket_activation_serves_the_passed_socket(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sp = systemd_style(listener)
    try:
        sp.wait_listening()
        assert sp.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            assert round_trip(c, b"activated") == b"ACTIVATED"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert sp.summary()["connections"] == "1"
    finally:
        sp.kill()
    # the socket is the manager's: still open and listening after muxio is gone
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_listen_fds_for_another_pid_is_ignored(listener: socket.socket) -> None:
    sp = HandedIn(
        [*MUXIO, "serve", "--port", "0"],
        pass_fds=(),
        env={"LISTEN_FDS": "1", "LISTEN_PID": "1"},
    )
    try:
        sp.wait_listening()
        assert sp.port != listener.getsockname()[1]
    finally:
        sp.kill()


def test_fd_option_serves_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    try:
        sp = HandedIn(
            [*MUXIO, "serve", "--fd", str(sock.fileno())], pass_fds=(sock.fileno(),), env={}
        )
        try:
            sp.wait_line(r"listening on .*/s ")
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(10)
                c.connect(path)
                assert round_trip(c, b"unix") == b"UNIX"
            sp.signal(signal.SIGTERM)
            assert sp.wait() == 0
        finally:
            sp.kill()
        assert os.path.exists(path), "a handed-in socket's file is not muxio's to remove"
    finally:
        sock.close()


def _one_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = proc.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "not a stream one"),
        (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), "not listening"),
        (lambda: open(os.devnull, "rb"), "is not a socket"),  # noqa: SIM115
    ],
)
def test_fd_that_is_not_a_listening_stream_socket_exits_2(make: object, message: str) -> None:
    thing = make()  # type: ignore[operator]
    try:
        fd = thing.fileno()
        proc = subprocess.run(
            [*MUXIO, "serve", "--fd", str(fd)], capture_output=True, timeout=30, pass_fds=(fd,)
        )
    finally:
        thing.close()
    assert proc.returncode == 2
    line = _one_error(proc)
    assert f"--fd {fd}" in line and message in line, line


def test_fd_not_open_exits_2() -> None:
    proc = subprocess.run([*MUXIO, "serve", "--fd", "999"], capture_output=True, timeout=30)
    assert proc.returncode == 2
    assert "descriptor 999 is not open" in _one_error(proc)


def test_fd_with_port_exits_2(listener: socket.socket) -> None:
    fd = listener.fileno()
    proc = subprocess.run(
        [*MUXIO, "serve", "--fd", str(fd), "--port", "9"],
        capture_output=True, timeout=30, pass_fds=(fd,),
    )
    assert proc.returncode == 2
    assert "leave out --port" in _one_error(proc)


def test_systemd_socket_of_the_wrong_type_exits_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        sp = systemd_style(udp)
        try:
            assert sp.wait() == 2
        finally:
            sp.kill()
    errors = [line for line in sp.lines if line.strip()]
    assert len(errors) == 1, errors
    assert "LISTEN_FDS socket 1 (web)" in errors[0] and "ListenStream" in errors[0]


def test_listen_fds_not_a_number_exits_2() -> None:
    proc = subprocess.run(
        ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *MUXIO, "serve"],  # $$: exec keeps it
        capture_output=True, timeout=30, env={**os.environ, "LISTEN_FDS": "many"},
    )
    assert proc.returncode == 2
    assert "LISTEN_FDS='many'" in _one_error(proc)


def test_systemd_socket_is_shared_by_workers(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    sp = systemd_style(listener, "--workers", "2")
    try:
        sp.wait_line(rf"supervisor \(pid \d+\) on 127\.0\.0\.1:{port}: 2 workers, shared sockets")
        for _ in range(2):
            sp.wait_line(rf"muxio\[worker \d\] INFO listening on 127\.0\.0\.1:{port} ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            assert round_trip(c, b"both") == b"BOTH"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
        assert sp.summary()["workers"] == "2"
    finally:
        sp.kill()
