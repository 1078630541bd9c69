"""Name what blocks the loop, at next to no cost to the loop itself.

Timing each callback would put two clock reads on every event.  Instead the
loop stamps when each iteration starts and clears the stamp before it waits
(two attribute stores per iteration), and this thread wakes a few times per
`slow_callback_duration`; if the loop has been busy in one iteration for
longer than that, it samples the loop thread's stack and leaves a description
for the loop's own slow-iteration warning: the coroutine and task, the
protocol method, or the callback that holds the loop.  An idle loop sits in
its poller with the stamp cleared, so the thread finds nothing to do.

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

import asyncio
import logging
import sys
import threading
import time
import traceback
from types import FrameType

from . import loop as _loop_module
from .loop import EventLoop

log = logging.getLogger("muxio")
_LOOP_FILE = _loop_module.__file__


_CO_COROUTINE = 0x80 | 0x100 | 0x200  # coroutine, iterable coroutine, async generator


def _loop_frame_handle(frame: FrameType | None) -> object:
    """The handle the loop's `_run_once` is running, read from that frame's locals."""
    while frame is not None:
        code = frame.f_code
        if code.co_name.startswith("_run_once") and code.co_filename == _LOOP_FILE:
            try:
                return frame.f_locals.get("handle") or frame.f_locals.get("cb")
            except Exception:  # another thread's frame: read what we can, never fail
                return None
        frame = frame.f_back
    return None


def describe_frame(frame: FrameType | None) -> str:
    """What holds the loop: a coroutine (task, qualname, where), a protocol method, or frames.

    Everything is read from the loop thread's stack as it is now, so nothing
    on the loop's own path pays for the description.
    """
    innermost = frame
    where = f"{innermost.f_code.co_filename}:{innermost.f_lineno}" if innermost else "?"
    outer_coroutine: FrameType | None = None
    protocol_frame: FrameType | None = None
    while frame is not None:
        code = frame.f_code
        if code.co_flags & _CO_COROUTINE:
            outer_coroutine = frame
        elif protocol_frame is None and outer_coroutine is None:
            owner = frame.f_locals.get("self") if code.co_name != "_run_once" else None
            if owner is not None and hasattr(owner, "data_received"):
                protocol_frame = frame
        frame = frame.f_back
    handle = _loop_frame_handle(innermost)
    callback = getattr(handle, "_callback", handle)
    task = getattr(callback, "__self__", None)
    if outer_coroutine is not None:
        code = outer_coroutine.f_code
        name = getattr(code, "co_qualname", code.co_name)
        if isinstance(task, asyncio.Task):
            return f"coroutine {name}() in task {task.get_name()!r} at {where}"
        return f"coroutine {name}() at {where}"
    if protocol_frame is not None:
        owner = protocol_frame.f_locals.get("self")
        transport = getattr(owner, "transport", None)
        peer = None
        if transport is not None and hasattr(transport, "get_extra_info"):
            peer = transport.get_extra_info("peername")
        what = f"{type(owner).__name__}.{protocol_frame.f_code.co_name}"
        return f"{what} (peer {peer!r}) at {where}"
    in_loop = innermost is not None and innermost.f_code.co_filename == _LOOP_FILE
    if callback is not None and in_loop:
        from .loop import _describe

        return f"callback {_describe(callback)} (not Python code) called from {where}"
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
