"""One check per serving parameter, shared by `muxio.serve`, `ServeConfig` and the CLI.

A value that slips through does not fail where it was given but much later
and far away: a ``nan`` timeout makes every comparison false and the loop
spin, a string ``max_connections`` raises once per accepted connection, an
empty socket list serves nothing without a word.  So every parameter is
checked once, at the door, with a message that names it; the command line
passes its flag as the name (``--idle-timeout``), the library the
parameter's (``idle_timeout``).

Minimums, and why:

``idle_timeout`` >= 0.1 s
    The idle sweep walks every connection each ``idle_timeout / 2``; below
    0.1 s that is more than 20 walks a second for a precision no client
    can tell apart, and at 1e-7 s the sweep alone is the whole CPU.
``proxy_protocol_timeout`` >= 0.01 s
    A one-shot timer per connection: 10 ms is about the loop's useful
    resolution (a busy turn lasts longer), so less only means "at once".
``shutdown_timeout`` >= 0 s
    A deadline, not a period: 0 means "abort what is still flushing at
    once", which is a meaningful request.
"""

from __future__ import annotations

import math
import socket
from typing import Any

MIN_IDLE_TIMEOUT = 0.1
MIN_HEADER_TIMEOUT = 0.01
MAX_TIMEOUT = 31_536_000.0
"""A year: longer is a mistake, and an inf overflows the first C call that takes it."""
MAX_CONNECTIONS = 1_000_000


def number(
    name: str, value: Any, *, low: float, high: float = MAX_TIMEOUT, unit: str = " s"
) -> float:
    """A finite real number in [low, high]; bools and strings are refused by type."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    result = float(value)
    if not (math.isfinite(result) and low <= result <= high):
        raise ValueError(
            f"{name} must be a number from {_plain(low)} to {_plain(high)}{unit}, not {value!r}"
        )
    return result


def timeout(
    name: str, value: Any, *, minimum: float, optional: bool = False
) -> float | None:
    """A timeout of at least `minimum` seconds; None (and, if `optional`, 0) means none."""
    if value is None and optional:
        return None
    if optional and not isinstance(value, bool) and value == 0:
        return None
    return number(name, value, low=minimum)


def whole(name: str, value: Any, *, low: int, high: int, optional: bool = False) -> int | None:
    """A whole number in [low, high] (None allowed if `optional`); `'10'` is not one."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, not {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def idle_timeout(value: Any, name: str = "idle_timeout") -> float | None:
    return timeout(name, value, minimum=MIN_IDLE_TIMEOUT, optional=True)


def shutdown_timeout(value: Any, name: str = "shutdown_timeout") -> float:
    result = timeout(name, value, minimum=0.0)
    assert result is not None
    return result


MIN_WORKER_TIMEOUT = 2.0
"""Twice the supervisor's heartbeat interval: one late beat must not kill a worker."""


def worker_timeout(value: Any, name: str = "worker_timeout") -> float | None:
    return timeout(name, value, minimum=MIN_WORKER_TIMEOUT, optional=True)


def header_timeout(value: Any, name: str = "proxy_protocol_timeout") -> float:
    result = timeout(name, value, minimum=MIN_HEADER_TIMEOUT)
    assert result is not None
    return result


def slow_callback_ms(value: Any, name: str = "slow_callback_ms") -> float:
    return number(name, value, low=0.0, high=3_600_000.0, unit=" ms")


MAX_PROFILE_SECONDS = 86_400.0
PROFILE_CLOCKS = ("cpu", "wall")


def profile_seconds(value: Any, name: str = "profile_seconds") -> float | None:
    """How long to profile: None (not from the start), else up to a day (the samples are kept)."""
    if value is None:
        return None
    seconds = number(name, value, low=0.0, high=MAX_PROFILE_SECONDS)
    if seconds <= 0:
        raise ValueError(f"{name} must be more than 0 s, not {value!r}")
    return seconds


def profile_clock(value: Any, name: str = "profile_clock") -> str:
    if value not in PROFILE_CLOCKS:
        raise ValueError(f"{name} must be one of {', '.join(PROFILE_CLOCKS)}, not {value!r}")
    return str(value)


def max_connections(value: Any, name: str = "max_connections") -> int | None:
    return whole(name, value, low=1, high=MAX_CONNECTIONS, optional=True)


def backlog(value: Any, name: str = "backlog") -> int:
    result = whole(name, value, low=1, high=65535)
    assert result is not None
    return result


def port(value: Any, name: str = "port") -> int:
    result = whole(name, value, low=0, high=65535)
    assert result is not None
    return result


def metrics_address(value: Any, name: str = "metrics") -> tuple[str, int]:
    """HOST:PORT (``[::1]:9464`` for IPv6) where the Prometheus endpoint listens."""
    if isinstance(value, tuple) and len(value) == 2:
        host, number = value
    elif isinstance(value, str) and ":" in value:
        host, _, number = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    else:
        raise ValueError(f"{name} must be HOST:PORT, e.g. 127.0.0.1:9464, not {value!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"{name} needs a host before the port, e.g. 127.0.0.1:9464")
    return host, port(number if not isinstance(number, str) else whole_text(number, name), name)


def whole_text(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{name} needs a port number after the colon, not {text!r}")
    return int(text)


def listening_problem(sock: socket.socket) -> str | None:
    """Why `sock` cannot be served (not a listening stream socket muxio serves), or None."""
    if sock.fileno() < 0:
        return "is closed"
    if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return f"is a socket of family {sock.family!r}; muxio serves IPv4, IPv6 and Unix sockets"
    if sock.type != socket.SOCK_STREAM:
        kind = getattr(sock.type, "name", str(sock.type))
        return f"is a {kind} socket, not a stream one"
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 1  # the OS cannot tell: let listen()'s own error speak later
    if not listening:
        return "is not listening (call listen() on it first)"
    return None


def sockets(value: Any, name: str = "sockets") -> list[socket.socket] | None:
    """None (bind the address) or a non-empty list of distinct listening stream sockets."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list of sockets, not {type(value).__name__}")
    result = list(value)
    if not result:
        raise ValueError(
            f"{name} is empty: pass at least one listening socket, or None to bind the address"
        )
    seen: set[int] = set()
    for i, sock in enumerate(result):
        if not isinstance(sock, socket.socket):
            raise TypeError(f"{name}[{i}] must be a socket, not {type(sock).__name__}")
        problem = listening_problem(sock)
        if problem is not None:
            raise ValueError(f"{name}[{i}] {problem}")
        if sock.fileno() in seen:
            raise ValueError(f"{name}[{i}] is descriptor {sock.fileno()} again: give each once")
        seen.add(sock.fileno())
    return result


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


__all__ = [
    "MIN_HEADER_TIMEOUT",
    "MIN_IDLE_TIMEOUT",
    "idle_timeout",
    "listening_problem",
    "max_connections",
    "number",
    "shutdown_timeout",
    "sockets",
    "timeout",
    "whole",
]
