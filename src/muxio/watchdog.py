# cython: annotation_typing=False
"""Name what blocks the loop, at next to no cost to the loop itself.

Timing each callback would put two clock reads on every event.  Instead the
loop stamps when each iteration starts and clears the stamp before it waits
(two attribute stores per iteration), and this thread wakes a few times per
`slow_callback_duration`; if the loop has been busy in one iteration for
longer than that, it samples the loop thread's stack and leaves a description
for the loop's own slow-iteration warning: the coroutine and task, the
protocol method, or the callback that holds the loop.  An idle loop sits in
its poller with the stamp cleared, so the thread finds nothing to do.

What is running is not guessed from the loop's frames: the loop stores the
handle or I/O callback it is about to call in `loop._running.now` (one store per
callback), and this thread reads that beside the stack it samples.  The
stack still says which coroutine or protocol method the callback is in.

A stall is not always the loop's doing: a stopped process (SIGSTOP, a
debugger), a suspended machine or a starved one stops every thread, this
one included.  Such a stall shows as this thread's own ticks stopping
while the process used next to no CPU.  Whichever thread resumes first
notices it — this one on its next tick, or the loop thread when it reports
the slow iteration and asks `describe_stall()` what to say (after a stop
the loop thread often gets there first) — and the warning then says the
process was not running instead of naming the callback it was in.

This module imports nothing of the loop's: the loop imports it.

The peer named in a description comes from the network (a Unix client
picks its own socket path), so it is logged as a repr: a newline or a
terminal escape in it cannot forge a log line.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import functools
import logging
import os
import sys
import threading
import time
import traceback
from types import CodeType, FrameType, ModuleType
from typing import Protocol

log = logging.getLogger("muxio")

_CO_COROUTINE = 0x80 | 0x100 | 0x200  # coroutine, iterable coroutine, async generator
_PROFILER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiler.py")
"""The profiler's handler runs on the loop thread: this thread can sample it mid-handler."""
NOT_RUNNING_SITE = "no callback: the process was not running"


class Running:
    """The loop's observation point: the handle or I/O callback it is calling now, or None.

    A slotted cell the loop keeps in a local for a whole iteration: a store
    into its slot costs about a quarter less than one into an attribute of
    the loop (86 against 113 instructions under callgrind), and the loop
    makes one per callback.
    """

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now: object = None


class Watched(Protocol):
    """What this thread reads of the loop it watches (the loop writes all three)."""

    _busy_since: float
    """When the current iteration left the poller; 0 while the loop waits in it."""
    _thread_id: int | None
    _running: Running
    """What the loop is running (`.now`: a handle, an I/O callback, or None)."""


def describe_callback(callback: object) -> str:
    """`Owner.method` or a qualname: short enough for a log line, enough to grep for."""
    owner = getattr(callback, "__self__", None)
    name = getattr(callback, "__qualname__", None) or repr(callback)
    if owner is not None and not isinstance(owner, (type, ModuleType)):
        return f"{type(owner).__name__}.{getattr(callback, '__name__', name)}"
    return str(name)


def _python_code(callback: object) -> CodeType | None:
    """The code a callback runs, or None for C code (a builtin, a C method)."""
    while isinstance(callback, functools.partial):
        runs_in = getattr(callback.func, "__self__", None)
        if isinstance(runs_in, contextvars.Context) and callback.args:
            callback = callback.args[0]  # Context.run(f): f's code is what runs
        else:
            callback = callback.func
    func = getattr(callback, "__func__", callback)
    code = getattr(func, "__code__", None)
    if code is None and callable(func):  # an instance of a class with a Python `__call__`?
        code = getattr(type(func).__call__, "__code__", None)
    return code if isinstance(code, CodeType) else None


def describe_frame(frame: FrameType | None, running: object = None) -> str:
    """What holds the loop: a coroutine (task, qualname, where), a protocol method, or frames.

    `running` is the loop's `_running` (a handle or an I/O callback), read
    with the loop thread's stack; the stack says where in it the loop is, so
    nothing on the loop's own path pays for the description.
    """
    return describe_frame_site(frame, running)[0]


def _defined_at(code: CodeType) -> str:
    return f"{code.co_filename}:{code.co_firstlineno}"


def describe_frame_site(frame: FrameType | None, running: object = None) -> tuple[str, str]:
    """`describe_frame`'s text and the *site* the loop aggregates slow iterations by.

    A site leaves out what differs between two stalls of the same code (the
    task's name, the peer, the line the sample happened to land on) and
    names the coroutine or method by where it is defined, so one slow
    handler is one site however many connections and tasks run it.  It is
    the innermost coroutine, where the description names the outermost (the
    task's): under a framework every request's task runs the same outer one.
    """
    while frame is not None and frame.f_code.co_filename == _PROFILER_FILE:
        frame = frame.f_back  # caught in a profile's signal handler: the loop's frame is below
    innermost = frame
    where = f"{innermost.f_code.co_filename}:{innermost.f_lineno}" if innermost else "?"
    outer_coroutine: FrameType | None = None
    inner_coroutine: FrameType | None = None
    protocol_frame: FrameType | None = None
    while frame is not None:
        code = frame.f_code
        if code.co_flags & _CO_COROUTINE:
            outer_coroutine = frame
            if inner_coroutine is None:
                inner_coroutine = frame
        elif protocol_frame is None and outer_coroutine is None:
            owner = frame.f_locals.get("self")
            if owner is not None and hasattr(owner, "data_received"):
                protocol_frame = frame
        frame = frame.f_back
    callback = getattr(running, "_callback", running)
    task = getattr(callback, "__self__", None)
    if outer_coroutine is not None:
        code = outer_coroutine.f_code
        name = getattr(code, "co_qualname", code.co_name)
        inner = inner_coroutine.f_code if inner_coroutine is not None else code
        # the innermost coroutine: a framework's outer one (uvicorn's run_asgi) runs every request
        site = f"coroutine {getattr(inner, 'co_qualname', inner.co_name)}() ({_defined_at(inner)})"
        if isinstance(task, asyncio.Task):
            return f"coroutine {name}() in task {task.get_name()!r} at {where}", site
        return f"coroutine {name}() at {where}", site
    if protocol_frame is not None:
        owner = protocol_frame.f_locals.get("self")
        transport = getattr(owner, "transport", None)
        peer = None
        if transport is not None and hasattr(transport, "get_extra_info"):
            peer = transport.get_extra_info("peername")
        what = f"{type(owner).__name__}.{protocol_frame.f_code.co_name}"
        return (
            f"{what} (peer {peer!r}) at {where}",
            f"{what} ({_defined_at(protocol_frame.f_code)})",
        )
    if callback is not None and _python_code(callback) is None:
        what = f"callback {describe_callback(callback)} (not Python code)"
        return f"{what} called from {where}", what
    if innermost is None:
        return "unknown code", "unknown code"
    stack = traceback.format_stack(innermost, limit=3)
    text = "code at " + " <- ".join(s.strip().splitlines()[0] for s in reversed(stack))
    return text, f"code in {innermost.f_code.co_name}() ({_defined_at(innermost.f_code)})"


def _warn_unlisted(msg: str, *args: object) -> None:
    """Log from the watchdog thread and keep it out of `threading.enumerate()`.

    `logging` names the thread through `threading.current_thread()`, which
    enters a thread threading did not start in its table as a dummy, for
    good; the entry is taken out again.
    """
    log.warning(msg, *args)
    active = getattr(threading, "_active", None)
    dummy_class = getattr(threading, "_DummyThread", None)
    ident = _thread.get_ident()
    if (
        isinstance(active, dict)
        and dummy_class is not None
        and isinstance(active.get(ident), dummy_class)
    ):
        active.pop(ident, None)


class Watchdog:
    """A daemon thread sampling the loop thread's stack when an iteration runs long.

    It writes only its own `sample`; the loop asks `describe_stall()` for it
    when it reports a slow iteration, so neither rewires the other.  The
    thread is a bare `_thread` one, absent from `threading.enumerate()`:
    code that counts its own threads (a thread pool's tests) must not see
    a helper the loop started.
    """

    def __init__(self, loop: Watched, threshold: float) -> None:
        self.loop = loop
        self.threshold = threshold
        self._stop = threading.Event()
        self._alive = _thread.allocate_lock()
        """Held while the thread runs: `stop()` joins by acquiring it."""
        self._pid = 0
        self._reported = 0.0
        self._absent: tuple[float, float] | None = None
        """(when, seconds): the last time the whole process was found not running."""
        self._interval = max(threshold / 2, 0.005)
        self._tick = (time.monotonic(), time.process_time())
        self.sample: tuple[float, str, str] | None = None
        """(iteration start, what held the loop in it, its site): the latest stall described."""

    def start(self) -> None:
        self._tick = (time.monotonic(), time.process_time())
        self._alive.acquire()
        self._pid = os.getpid()
        try:
            _thread.start_new_thread(self._main, ())
        except BaseException:
            self._alive.release()
            raise

    def stop(self) -> None:
        self._stop.set()
        # a forked child has the lock held by a thread it does not have
        if self._pid == os.getpid() and self._alive.acquire(timeout=2):
            self._alive.release()

    def is_alive(self) -> bool:
        return self._pid == os.getpid() and self._alive.locked()

    def _main(self) -> None:
        try:
            self._run()
        finally:
            self._alive.release()

    def describe_stall(self, started: float, busy: float) -> tuple[str, str] | None:
        """What held the iteration that began at `started` and its site; None if not sampled.

        Called on the loop thread as it reports the slow iteration: after a
        stop it often resumes before this thread does, so it checks for a
        process that was not running itself (see the module doc).
        """
        self._blame_nobody(started, busy)
        sample = self.sample
        return (sample[1], sample[2]) if sample is not None and sample[0] == started else None

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
        self.sample = (
            started,
            f"no callback: the process was not running for {missed:.1f} s of it "
            "(stopped, suspended or starved of CPU)",
            NOT_RUNNING_SITE,
        )
        return True

    def _run(self) -> None:
        interval = self._interval
        long_block = max(self.threshold * 10, 1.0)
        loop = self.loop
        while not self._stop.wait(interval):
            now, cpu = time.monotonic(), time.process_time()
            missed = self._not_running(now, cpu)
            if missed:
                self._absent = (now, missed)
            self._tick = (now, cpu)
            started = loop._busy_since
            thread_id = loop._thread_id
            if not started or thread_id is None:
                continue
            busy = now - started
            if busy < self.threshold:
                continue
            sample = self.sample
            if not self._blame_nobody(started, busy) and (sample is None or sample[0] != started):
                frame = sys._current_frames().get(thread_id)
                self.sample = (started, *describe_frame_site(frame, loop._running.now))
            if busy >= long_block and self._reported != started:
                self._reported = started
                _warn_unlisted(
                    "the loop has been blocked for %.1f s so far, in %s",
                    busy,
                    self.sample[1] if self.sample else "?",
                )
