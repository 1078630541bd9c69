"""What is sent and what counts as a right answer, for each protocol.

`echo` sends fixed-size messages and wants each back uppercased, byte for
byte.  `line` sends newline-terminated lines and wants one line back for
each, judged by a check: the built-in ones below, or any function of the
same shape.
"""

from __future__ import annotations

import random

_PAYLOAD_VARIANTS = 16
_SHOWN = 40


def make_payloads(size: int, seed: int, count: int = _PAYLOAD_VARIANTS) -> list[bytes]:
    """Mixed lowercase, uppercase, digits, control and non-ASCII bytes, so a server
    that echoes without uppercasing, or uppercases bytes >= 0x80, is caught."""
    rng = random.Random(seed)
    alphabet = bytes(range(ord("a"), ord("z") + 1)) * 4 + bytes(range(256))
    out = []
    for i in range(count):
        body = bytes(rng.choice(alphabet) for _ in range(min(size, 4096)))
        reps = -(-size // len(body))
        b = bytearray((body * reps)[:size])
        b[0] = ord("a") + i % 26
        if size > 1:
            b[-1] = 0xE9
        out.append(bytes(b))
    return out


def make_lines(size: int, seed: int, count: int = _PAYLOAD_VARIANTS) -> list[bytes]:
    """Lines of `size` bytes counting their newline (given without it), the echo payloads'
    mix minus CR and LF, so a line server sees exactly one line per request."""
    lines = []
    for p in make_payloads(max(size - 1, 1), seed, count):
        line = p.replace(b"\r", b"r").replace(b"\n", b"n")
        lines.append(line[: size - 1])
    return lines


def show(data: bytes | bytearray | memoryview) -> str:
    """A short printable form of some bytes for a one-line error."""
    b = bytes(data)
    if len(b) <= _SHOWN:
        return repr(b)
    return f"{bytes(b[:_SHOWN])!r}... ({len(b)} bytes)"


def describe_mismatch(expected: bytes, got: bytes | bytearray | memoryview) -> str:
    """`expected ..., got ...`, around the first differing byte when the replies are long."""
    got = bytes(got)
    if len(expected) <= _SHOWN and len(got) <= _SHOWN:
        return f"expected {expected!r}, got {got!r}"
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    if at is None:
        at = min(len(expected), len(got))
    start = max(0, at - 8)
    return (
        f"expected {show(expected[start : start + 24])}, got {show(got[start : start + 24])} "
        f"(first difference at byte {at} of {len(expected)})"
    )


def expect_upper(request: bytes, reply: bytes) -> str | None:
    """The reply is the request uppercased (ASCII only): the upper and work services."""
    wanted = request.upper()
    return None if reply == wanted else describe_mismatch(wanted, reply)


def expect_same(request: bytes, reply: bytes) -> str | None:
    """The reply is the request unchanged: a plain echo server."""
    return None if reply == request else describe_mismatch(request, reply)


def expect_any(request: bytes, reply: bytes) -> str | None:
    """Any one line: only the framing is checked (one reply line per request)."""
    return None


CHECKS = {"upper": expect_upper, "same": expect_same, "any": expect_any}
"""The built-in checks by name, for a command line to offer."""
