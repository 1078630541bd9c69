"""Name what blocks the loop, at next to no cost to the loop itself.

Timing each callback would put two clock reads on every event.  Instead the
loop stamps when each iteration starts (one attribute store), and this thread
wakes a few times per `slow_callback` period; if the loop has been busy in
one iteration for longer than that, it samples the loop thread's stack and
leaves a description for the loop's own slow-iteration warning.  An idle loop
sits in its poller with the stamp cleared, so the thread finds nothing to do.

A stall is not always the loop's doing: a stopped process (SIGSTOP, a
debugger), a suspended machine or a starved one stops every thread, this
one included.  Such a stall shows as this thread's own ticks stopping
while the process used next to no CPU.  Whichever thread resumes first
notices it — this one on its next tick, or the loop thread when it reports
the slow iteration (the watchdog hooks that report, because after a stop
the loop thread often gets there first) — and the warning then says the
process was not running instead of naming the callback it was in.

The peer named in a description comes from the network (a Unix client
picks its own socket path), so it is logged as a repr: a newline or a
terminal escape in it cannot forge a log line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from types import FrameType

from .loop import EventLoop

log = logging.getLogger("muxio")


def describe_frame(frame: FrameType | None) -> str:
    """The innermost protocol method on the stack, with its peer, or the top frames."""
    innermost = frame
    while frame is not None:
        owner = frame.f_locals.get("self")
        if owner is not None and hasattr(owner, "data_received"):
            code = frame.f_code
            where = f"{type(owner).__name__}.{code.co_name}"
            transport = getattr(owner, "transport", None)
            peer = None
            if transport is not None and hasattr(transport, "get_extra_info"):
                peer = transport.get_extra_info("peername")
            at = f"{innermost.f_code.co_filename}:{innermost.f_lineno}" if innermost else "?"
            return f"{where} (peer {peer!r}) at {at}"
        frame = frame.f_back
    if innermost is None:
        return "unknown code"
    stack = traceback.format_stack(innermost, limit=3)
    return "code at " + " <- ".join(s.strip().splitlines()[0] for s in reversed(stack))


class Watchdog:
    """A daemon thread sampling the loop thread's stack when an iteration runs long."""

    def __init__(self, loop: EventLoop, threshold: float) -> None:
        self.loop = loop
        self.threshold = threshold
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="muxio-watchdog", daemon=True)
        self._reported = 0.0
        self._absent: tuple[float, float] | None = None
        """(when, seconds): the last time the whole process was found not running."""
        self._interval = max(threshold / 2, 0.005)
        self._tick = (time.monotonic(), time.process_time())
        self._report = getattr(loop, "_report_slow", None)

    def start(self) -> None:
        self._tick = (time.monotonic(), time.process_time())
        if self._report is not None:
            self.loop._report_slow = self._report_slow  # type: ignore[method-assign]
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._report is not None and "_report_slow" in vars(self.loop):
            del self.loop._report_slow

    def _not_running(self, now: float, cpu: float) -> float:
        """Seconds the whole process lately spent not running (0 if it ran)."""
        last, last_cpu = self._tick
        missed = now - last - self._interval
        if missed >= self.threshold and cpu - last_cpu < missed / 2:
            return missed
        return 0.0

    def _blame_nobody(self, started: float, busy: float) -> bool:
        """If the process was not running for most of this stall, say so in the sample."""
        missed = self._not_running(time.monotonic(), time.process_time())
        absent = self._absent
        if not missed and absent is not None and absent[0] >= started:
            missed = absent[1]
        if not busy / 2 <= missed <= busy + self._interval + self.threshold:
            return False  # a stall of its own, not (mostly) the process being stopped
        self.loop.slow_sample = (
            started,
            f"no callback: the process was not running for {missed:.1f} s of it "
            "(stopped, suspended or starved of CPU)",
        )
        return True

    def _report_slow(self, started: float, busy: float, n_events: int) -> None:
        """The loop's slow-iteration report, run on the loop thread; see the module doc."""
        self._blame_nobody(started, busy)
        assert self._report is not None
        self._report(started, busy, n_events)

    def _run(self) -> None:
        interval = self._interval
        long_block = max(self.threshold * 10, 1.0)
        while not self._stop.wait(interval):
            now, cpu = time.monotonic(), time.process_time()
            missed = self._not_running(now, cpu)
            if missed:
                self._absent = (now, missed)
            self._tick = (now, cpu)
            started = self.loop._busy_since
            thread_id = self.loop._thread_id
            if not started or thread_id is None:
                continue
            busy = now - started
            if busy < self.threshold:
                continue
            sample = self.loop.slow_sample
            if self._blame_nobody(started, busy):
                pass
            elif sample is None or sample[0] != started:
                frame = sys._current_frames().get(thread_id)
                self.loop.slow_sample = (started, describe_frame(frame))
            if busy >= long_block and self._reported != started:
                self._reported = started
                log.warning(
                    "the loop has been blocked for %.1f s so far, in %s",
                    busy,
                    self.loop.slow_sample[1] if self.loop.slow_sample else "?",
                )
