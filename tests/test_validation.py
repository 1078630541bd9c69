"""Every serving parameter is checked once, at the door, naming itself (`muxio.validate`).

Each library case runs `muxio.serve(...)` in a child process with port 0:
a value that slips through would serve (or spin) until the timeout instead
of raising, and the child is killed rather than this test hanging.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from helpers import one_line

CHILD_TIMEOUT = 20


def serve_in_child(arguments: str, setup: str = "") -> str:
    """The exception `muxio.serve(<arguments>)` raised in a child, as 'Type: message'."""
    code = (
        "import math, socket, muxio\n"
        f"{setup}\n"
        "try:\n"
        f"    muxio.serve(muxio.Protocol, port=0, {arguments})\n"
        "except (TypeError, ValueError) as exc:\n"
        "    print(f'{type(exc).__name__}: {exc}')\n"
        "else:\n"
        "    print('returned')\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"muxio.serve({arguments}) was accepted: still serving after {CHILD_TIMEOUT} s")
    return out.stdout.strip() or out.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("idle_timeout=-1", "ValueError: idle_timeout must be a number from 0.1"),
        ("idle_timeout=math.nan", "ValueError: idle_timeout"),
        ("idle_timeout=1e-7", "ValueError: idle_timeout"),
        ("shutdown_timeout='x'", "TypeError: shutdown_timeout must be a number"),
        ("shutdown_timeout=math.inf", "ValueError: shutdown_timeout"),
        ("max_connections='10'", "TypeError: max_connections must be a whole number"),
        ("max_connections=0", "ValueError: max_connections"),
        ("slow_callback_ms=math.nan", "ValueError: slow_callback_ms"),
        ("sockets=[]", "ValueError: sockets is empty"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(arguments: str, expected: str) -> None:
    assert serve_in_child(arguments).startswith(expected)


def test_a_udp_socket_is_refused() -> None:
    setup = "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(('127.0.0.1', 0))"
    result = serve_in_child("sockets=[udp]", setup)
    assert result.startswith("ValueError: sockets[0] is a SOCK_DGRAM socket"), result


def test_the_same_socket_twice_is_refused() -> None:
    setup = (
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "t = socket.socket(fileno=s.fileno())"
    )
    result = serve_in_child("sockets=[s, t]", setup)
    assert result.startswith("ValueError: sockets[1] is descriptor"), result


def test_zero_idle_timeout_means_none_and_small_ones_have_a_floor() -> None:
    from muxio import validate

    assert validate.idle_timeout(0) is None
    assert validate.idle_timeout(None) is None
    assert validate.idle_timeout(0.1) == 0.1
    with pytest.raises(ValueError, match="idle_timeout"):
        validate.idle_timeout(0.05)
    with pytest.raises(TypeError, match="idle_timeout"):
        validate.idle_timeout(True)


def muxio_cli(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "muxio", *args],
        capture_output=True,
        timeout=CHILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
        pass_fds=pass_fds,
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--idle-timeout", "0.0000001"),
        ("--idle-timeout", "nan"),
        ("--proxy-protocol-timeout", "0.0001"),
        ("--max-connections", "0"),
    ],
)
def test_the_command_line_reuses_the_checks_and_names_its_flag(flag: str, value: str) -> None:
    result = muxio_cli("serve", "--port", "0", flag, value)
    line = one_line(result.stderr)
    assert result.returncode == 2, line
    assert f"invalid value {value!r}: {flag} must be" in line


def test_the_same_fd_twice_is_a_usage_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = listener.fileno()
        result = muxio_cli("serve", "--fd", str(fd), "--fd", str(fd), pass_fds=(fd,))
    line = one_line(result.stderr)
    assert result.returncode == 2, line
    assert f"--fd {fd} is given twice" in line
