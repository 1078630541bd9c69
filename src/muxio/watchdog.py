"""Name what blocks the loop, at next to no cost to the loop itself.

Timing each callback would put two clock reads on every event.  Instead the
loop stamps when each iteration starts and clears the stamp before it waits
(two attribute stores per iteration), and this thread wakes a few times per
`slow_callback_duration`; if the loop has been busy in one iteration for
longer than that, it samples the loop thread's stack and leaves a description
for the loop's own slow-iteration warning: the coroutine and task, the
protocol method, or the callback that holds the loop.  An idle loop sits in
its poller with the stamp cleared, so the thread finds nothing to do.
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
        return f"{what} (peer {peer}) at {where}"
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

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        interval = max(self.threshold / 2, 0.005)
        long_block = max(self.threshold * 10, 1.0)
        while not self._stop.wait(interval):
            started = self.loop._busy_since
            thread_id = self.loop._thread_id
            if not started or thread_id is None:
                continue
            busy = time.monotonic() - started
            if busy < self.threshold:
                continue
            sample = self.loop.slow_sample
            if sample is None or sample[0] != started:
                frame = sys._current_frames().get(thread_id)
                self.loop.slow_sample = (started, describe_frame(frame))
            if busy >= long_block and self._reported != started:
                self._reported = started
                log.warning(
                    "the loop has been blocked for %.1f s so far, in %s",
                    busy,
                    self.loop.slow_sample[1] if self.loop.slow_sample else "?",
                )
