"""One module per transport kind: stream sockets, datagrams, pipes, subprocesses.

Transports use only the public loop API (plus the loop's own fast paths where
they take them), so this package sits below `muxio.loop`, which imports it.
"""


def water_marks(high: int | None, low: int | None, default_high: int) -> tuple[int, int]:
    """asyncio's rule for `set_write_buffer_limits`: give one, the other is 4x or 1/4 of it."""
    if high is None:
        high = 4 * low if low is not None else default_high
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low
