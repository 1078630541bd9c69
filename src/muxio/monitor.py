"""`muxio.monitor()`: the loop's health every few seconds, as what changed since the last look.

`EventLoop.health()` is cumulative since the loop first ran, which hides a
bad minute inside a good hour; a monitor keeps the previous snapshot and
reports the interval between two (iterations per second, utilisation,
delay percentiles over just that interval), the way Node's
`eventLoopUtilization(prev)` does.  It reads counters the loop keeps
anyway, so watching costs one snapshot per interval and nothing per
iteration.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from .histogram import quantile_ms, subtract
from .loop import EventLoop, LoopHealth


class HealthSnapshot(NamedTuple):
    """The loop's health over one interval; `health` holds the totals at its end."""

    health: LoopHealth
    interval_s: float
    iterations: int
    iterations_per_s: float
    utilisation: float
    """Busy seconds / wall seconds within the interval (0-1)."""
    iteration_p99_ms: float
    delay_p50_ms: float
    delay_p99_ms: float
    delays: int
    """Delay samples taken in the interval (iterations that had work waiting)."""
    gc_pauses: int
    gc_pause_ms: float


def between(earlier: LoopHealth, later: LoopHealth) -> HealthSnapshot:
    """What the loop did from `earlier` to `later` (two `health()` of one loop)."""
    seconds = later.time - earlier.time
    wall = later.wall_s - earlier.wall_s
    busy = later.busy_s - earlier.busy_s
    iterations = later.iterations - earlier.iterations
    delay = subtract(later.delay_ns, earlier.delay_ns)
    return HealthSnapshot(
        health=later,
        interval_s=round(seconds, 6),
        iterations=iterations,
        iterations_per_s=round(iterations / seconds, 1) if seconds > 0 else 0.0,
        utilisation=round(min(max(busy / wall, 0.0), 1.0), 4) if wall > 0 else 0.0,
        iteration_p99_ms=quantile_ms(
            subtract(later.iteration_ns, earlier.iteration_ns),
            0.99,
            later.stats["max_lag_ms"] * 1e6,
        ),
        delay_p50_ms=quantile_ms(delay, 0.5, later.delay_max_ms * 1e6),
        delay_p99_ms=quantile_ms(delay, 0.99, later.delay_max_ms * 1e6),
        delays=sum(delay.values()),
        gc_pauses=later.gc_pauses - earlier.gc_pauses,
        gc_pause_ms=round(later.gc_pause_ms - earlier.gc_pause_ms, 3),
    )


class Monitor:
    """Health snapshots of one muxio loop: `snapshot()` on demand, or ``async for`` every interval.

    Each snapshot covers the time since the previous one (or since the
    monitor was made).
    """

    def __init__(self, loop: EventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self._last = loop.health()

    def snapshot(self) -> HealthSnapshot:
        now = self.loop.health()
        taken = between(self._last, now)
        self._last = now
        return taken

    def __aiter__(self) -> Monitor:
        return self

    async def __anext__(self) -> HealthSnapshot:
        await asyncio.sleep(self.interval)
        return self.snapshot()


def monitor(loop: asyncio.AbstractEventLoop | None = None, interval: float = 1.0) -> Monitor:
    """A `Monitor` of `loop` (default: the running loop), which must be muxio's."""
    if not interval > 0:
        raise ValueError(f"monitor interval must be a positive number of seconds, not {interval!r}")
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "muxio.monitor() without a loop needs a running one: call it from a coroutine "
                "or pass loop="
            ) from None
    if not isinstance(loop, EventLoop):
        raise TypeError(
            f"muxio.monitor() reads muxio's event loop, and this is {type(loop).__module__}."
            f"{type(loop).__qualname__}: run the program on muxio's loop (muxio.run(), "
            "`muxio run`, or asyncio.set_event_loop_policy(muxio.EventLoopPolicy()))"
        )
    return Monitor(loop, interval)
