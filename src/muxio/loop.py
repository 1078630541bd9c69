# cython: annotation_typing=False
"""The event loop: one thread, one poller, a heap of timers and a ready queue.

Shaped after Redis's `ae.c`, in asyncio's order: per iteration, wait in the
poller until the next timer is due, then run the `call_soon` callbacks that
were ready before the wait, the I/O callbacks of the ready descriptors, and
the timers due when the wait returned; what those schedule runs in the next
iteration.  Everything that can be decided once — which poller bits mean
"readable", bound methods, dict lookups — is decided before the loop starts,
because an iteration may carry thousands of events.

It is also a complete `asyncio.AbstractEventLoop`, so the same object runs
asyncio's C `Future` and `Task`, `asyncio.run`, streams and every library on
top of them.  The asyncio contract is kept where it is observable (exceptions,
ordering of `call_soon`, contexts, the exception handler); what is private to
CPython's selector loop (`_selector`, `_process_events`) is not imitated.  Two
paths exist for descriptors: `add_reader(fd, cb, *args)` wraps the callback in
a `Handle` with its context, as asyncio does, while muxio's own transports use
`_add_reader(fd, cb)` with a callable that needs no handle: a partial of their
context's `run` around a bound method, one C call between the poller and `recv`.

Detection and response share this one thread, so the loop measures itself:
each iteration's busy time (from the poller's return to the next wait) feeds
`stats()`, and an iteration longer than `slow_callback_duration` seconds is
reported with what was running, sampled by the `Watchdog` thread.  The loop
names what it is running in one slot, `_running.now` (a handle or an I/O
callback), which the watchdog and debug mode's exception handler read.
Health is always recorded too (`LoopCounters`: iteration and delay
histograms; `GcPauses`; slow iterations by site): one add and one compare
per iteration, the rest only for iterations past `HEALTH_FLOOR`, and read
back only when asked (`stats()`, `health()`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import heapq
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import warnings
import weakref
from asyncio import base_events as _base_events
from asyncio import events as _events
from collections import deque
from collections.abc import Callable
from contextvars import Context, copy_context
from time import get_clock_info, monotonic
from typing import TYPE_CHECKING, NamedTuple

from . import connect, listeners, resolve
from . import profiler as _profiler
from . import sendfile as _sendfile
from .histogram import SLOTS, quantile_ms, slot_of, slot_range, sparse
from .otel import record_stall
from .pollers import READ, WRITE, Poller, new_poller
from .pollers.epoll import EpollPoller
from .server import Server
from .sockops import SocketOps
from .transports.stream import UncountedTransport
from .watchdog import NOT_RUNNING_SITE, Running, Watchdog, describe_callback

try:
    import cython
except ImportError:  # the pure build: Cython is a build tool, never a run-time dependency
    _COMPILED = False
else:
    _COMPILED = cython.compiled

if TYPE_CHECKING:
    import ssl as _ssl
    from types import FrameType
    from typing import Any

    _epoll_wait: Callable[[int, float | None], list[tuple[int, int]]]
    _handle_slots: Callable[[type, type, type], None]
    _fill_handle: Callable[[Any, Any, Any, Any, Any], None]
    _fill_timer: Callable[[Any, float], None]
    _c_monotonic: Callable[[], float]
    _check_signals: Callable[[], int]
    _cancelled: Callable[[Any], bool]
    _run_handle: Callable[[Any], object]
    """The compiled build's (loop.pxd): `select.epoll.poll` without its costs, and asyncio's
    handle slots read and written at their offsets; the pure build never calls them."""

log = logging.getLogger("muxio")
aio_log = logging.getLogger("asyncio")
"""asyncio's own messages (the exception handler's) go where asyncio users look for them."""

MAX_WAIT = 86400.0
"""The longest single wait in the poller; a farther timer just costs a wake-up a day."""

IOCallback = Callable[[], object]
_DEBUG_STACK_DEPTH = 10
_COMPACT_AFTER = 64
MAX_SITES = 256
"""Distinct slow sites kept; later ones are counted together under `OTHER_SITE`."""
OTHER_SITE = "other sites"
GC_SITE = "garbage collection"


class Handle(asyncio.Handle):
    """asyncio's `Handle`, made without the per-call debug check and two stores.

    Subclassing keeps `isinstance(h, asyncio.Handle)`, `repr()` and `_run()`
    as asyncio's.  `_repr` and `_source_traceback` are class-level None here
    (they only matter in debug mode, where the loop makes plain
    `asyncio.Handle`s that record where they were made), so `cancel()` is
    redefined not to store `_repr`.  `call_soon` fills the slots itself: one
    Python frame less per callback than calling a constructor.
    """

    __slots__ = ()
    _repr = None
    _source_traceback = None

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: Context | None = None,
    ) -> None:
        self._callback = callback
        self._args = args
        self._loop = loop
        self._context = copy_context() if context is None else context
        self._cancelled = False

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._callback = None  # type: ignore[assignment]
            self._args = None  # type: ignore[assignment]


class TimerHandle(asyncio.TimerHandle):
    """asyncio's `TimerHandle`; the loop's heap holds `(when, seq, handle)` tuples.

    Tuples compare in C and `seq` keeps callbacks due at the same moment in
    the order they were scheduled, where asyncio's own heap leaves it undefined.
    """

    __slots__ = ()
    _repr = None
    _source_traceback = None

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: Context | None = None,
    ) -> None:
        self._callback = callback
        self._args = args
        self._loop = loop
        self._context = copy_context() if context is None else context
        self._cancelled = False
        self._when = when
        self._scheduled = False

    def cancel(self) -> None:
        if not self._cancelled:
            self._loop._timer_handle_cancelled(self)  # type: ignore[attr-defined]
            self._cancelled = True
            self._callback = None  # type: ignore[assignment]
            self._args = None  # type: ignore[assignment]


_new_handle = object.__new__
if _COMPILED:
    _handle_slots(asyncio.TimerHandle, Handle, TimerHandle)  # noqa: F821 (loop.pxd)


class LoopCounters:
    """What the loop did; cheap to keep because it is counted per iteration.

    Every bytecode here runs once per iteration (~45 instructions each, and
    a bare `call_soon` iteration is ~13,700), so the histograms take only
    what matters for "what is blocking my loop": an iteration or a delay of
    at least `HEALTH_FLOOR` seconds goes into its slot (`_record_busy`, off
    the common path); a shorter one is only counted, and the snapshots put
    those in one slot at half the floor.  The per-iteration cost is then one
    float added to `busy` and one compare; recording every iteration into its slot
    measured +2,800 instructions per iteration (+11 % per 1-connection echo
    request).  The busy total is summed exactly.
    """

    __slots__ = (
        "busy",
        "callbacks",
        "delay",
        "events",
        "iteration",
        "iterations",
        "max_lag",
        "slow_iterations",
        "started",
        "timer_callbacks",
        "timer_delays",
    )

    def __init__(self) -> None:
        self.iterations = 0
        self.events = 0
        self.callbacks = 0
        self.slow_iterations = 0
        self.max_lag = 0.0
        """The longest stretch, in seconds, the loop spent away from its poller."""
        self.busy = 0.0
        """Seconds spent away from the poller in all: utilisation's numerator."""
        self.timer_callbacks = 0
        """Of the callbacks run, the timers' (`callbacks` counts the ready ones)."""
        self.timer_delays = 0
        """Iterations that ran due timers: one delay sample each (their first timer's)."""
        self.started = 0.0
        """`monotonic()` when the loop first ran: utilisation's wall clock starts there."""
        self.iteration = [0] * SLOTS
        self.delay = [0] * SLOTS


class GcPauses:
    """The collector's pauses on one loop's thread, timed by `gc.callbacks`.

    A collection runs on whichever thread allocated, inside whatever callback
    that was: timing it apart lets the slow-iteration report blame the
    collector, not the code it interrupted.  `iter_start`/`iter_total` are
    the collector's share of the current iteration (keyed by its start), so
    the loop reads it only when it reports a slow one.
    """

    __slots__ = (
        "count",
        "generations",
        "iter_start",
        "iter_total",
        "last_generation",
        "max",
        "t0",
        "total",
    )

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.generations = [0, 0, 0]
        self.last_generation = 0
        self.t0 = 0.0
        self.iter_start = 0.0
        self.iter_total = 0.0


_gc_loops: dict[int, EventLoop] = {}
"""Thread id → the muxio loop running on it: whose `GcPauses` a collection there counts in."""
_gc_lock = threading.Lock()


def _on_gc(phase: str, info: dict[str, int]) -> None:
    """`gc.callbacks` hook: installed while any muxio loop runs, a dict lookup otherwise."""
    loop = _gc_loops.get(threading.get_ident())
    if loop is None:
        return
    g = loop._gc
    if phase == "start":
        g.t0 = monotonic()
        return
    if not g.t0:
        return
    pause = monotonic() - g.t0
    g.t0 = 0.0
    g.count += 1
    g.total += pause
    if pause > g.max:
        g.max = pause
    generation = info.get("generation", 0)
    if 0 <= generation < len(g.generations):
        g.generations[generation] += 1
    g.last_generation = generation
    since = loop._busy_since
    if since:
        if g.iter_start != since:
            g.iter_start = since
            g.iter_total = 0.0
        g.iter_total += pause


def _watch_gc(loop: EventLoop, thread_id: int) -> None:
    with _gc_lock:
        _gc_loops[thread_id] = loop
        if _on_gc not in gc.callbacks:
            gc.callbacks.append(_on_gc)


def _unwatch_gc(thread_id: int) -> None:
    with _gc_lock:
        _gc_loops.pop(thread_id, None)
        if not _gc_loops and _on_gc in gc.callbacks:
            gc.callbacks.remove(_on_gc)


def _gc_after_fork() -> None:
    """A forked child has one thread: only a loop running on it is still running."""
    global _gc_lock
    _gc_lock = threading.Lock()  # another thread may have held it at the fork
    mine = _gc_loops.get(threading.get_ident())
    _gc_loops.clear()
    if mine is not None:
        _gc_loops[threading.get_ident()] = mine
    elif _on_gc in gc.callbacks:
        gc.callbacks.remove(_on_gc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gc_after_fork)


class SlowSite(NamedTuple):
    """Slow iterations the watchdog blamed on one site, summed."""

    site: str
    iterations: int
    """How many slow iterations (the count)."""
    total_ms: float
    max_ms: float


class LoopHealth(NamedTuple):
    """One snapshot of `EventLoop.health()`; `muxio.monitor()` subtracts two of them.

    Histograms are sparse ``{slot: count}`` in `muxio.histogram`'s layout,
    in nanoseconds (`muxio.histogram.percentile` reads them).
    """

    time: float
    """`time.monotonic()` when taken."""
    wall_s: float
    """Seconds since the loop first ran."""
    busy_s: float
    """Of those, seconds spent away from the poller (callbacks, I/O, GC on its thread)."""
    iterations: int
    iteration_ns: dict[int, int]
    delay_ns: dict[int, int]
    delay_max_ms: float
    ready: int
    timers: int
    tasks: int
    gc_pauses: int
    gc_pause_ms: float
    gc_pause_max_ms: float
    gc_generations: list[int]
    sites: list[SlowSite]
    """The slowest sites by total blocked time, most first."""
    stats: dict[str, float]
    """`stats()` at the same moment."""

    @property
    def utilisation(self) -> float:
        return min(self.busy_s / self.wall_s, 1.0) if self.wall_s > 0 else 0.0


def _largest(hist: dict[int, int]) -> int:
    """The largest value recorded (ns), as the middle of the highest slot used."""
    if not hist:
        return 0
    low, high = slot_range(max(hist))
    return (low + high - 1) // 2


def _health_floor(default: float = 50e-6) -> float:
    """`MUXIO_HEALTH_FLOOR_US`, in seconds: the health histograms' resolution (LoopCounters).

    Read once, at import, like `PYTHONASYNCIODEBUG`.  Under callgrind a
    program runs ~50 times slower, so every iteration would cross the
    default floor; the instruction-count benchmarks raise it in proportion.
    """
    raw = "" if sys.flags.ignore_environment else os.environ.get("MUXIO_HEALTH_FLOOR_US", "")
    if not raw.strip():
        return default
    try:
        value = float(raw) / 1e6
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        log.warning("MUXIO_HEALTH_FLOOR_US=%r is not a number of microseconds: using 50", raw)
        return default
    return value


HEALTH_FLOOR = _health_floor()
"""Seconds: iterations and delays this short are counted, not placed in a slot (LoopCounters)."""


def _with_floor(recorded: list[int], total: int, floor: float) -> dict[int, int]:
    """A sparse histogram with the samples under the floor put in the slot of half the floor."""
    hist = sparse(recorded)
    under = total - sum(hist.values())
    if under > 0:
        slot = slot_of(int(floor * 5e8))
        hist[slot] = hist.get(slot, 0) + under
    return hist


def _fileno(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _format_handle(handle: Any) -> str:
    """asyncio's debug-mode name for a handle: a task's step is named by its task."""
    owner = getattr(handle._callback, "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else str(handle)


def _debug_from_environment() -> bool:
    env = not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    return sys.flags.dev_mode or env


def _stop_on_done(fut: asyncio.Future[Any]) -> None:
    if fut.cancelled() or not isinstance(fut.exception(), (SystemExit, KeyboardInterrupt)):
        fut.get_loop().stop()


class _LoopCore:
    """The iteration's state and hot methods, apart from the asyncio API around them.

    `loop.pxd` declares this class a C extension type with typed fields, so
    a compiled build (Cython, pure-Python mode) turns the iteration, the
    `call_soon` path and the descriptor table into C: field access is a
    struct load instead of a dict lookup, and calls between these methods
    skip the Python call protocol.  `EventLoop` puts `asyncio.AbstractEventLoop`
    on top, as uvloop puts its Python `Loop` over its C one.  Without the
    compiler this is an ordinary base class and behaves the same.
    """

    def __init__(self, poller: Poller, slow_callback_ms: float | None) -> None:
        self.poller = poller
        if _COMPILED:  # C fields: the pure build's instance dict stays as it was
            self._epoll = poller if type(poller) is EpollPoller else None
            """The compiled iteration calls `epoll_wait` itself on this poller's descriptor."""
            self._epfd = poller.fileno() if self._epoll is not None else -1
        self._watch = bool(slow_callback_ms and slow_callback_ms > 0)
        self.slow_callback_duration = (slow_callback_ms or 100.0) / 1000
        self._watchdog: Watchdog | None = None
        self._readers: dict[int, IOCallback] = {}
        self._writers: dict[int, IOCallback] = {}
        self._ready: deque[Any] = deque()  # asyncio.Handle: typeshed hides its fields
        self._timers: list[tuple[float, int, Any]] = []
        self._timers_cancelled = 0
        self._seq = itertools.count()
        self._clock_resolution = get_clock_info("monotonic").resolution
        self._stopping = False
        self._closed = False
        self._thread_id: int | None = None
        self._busy_since = 0.0
        self._running = Running()
        """The handle or I/O callback being run; the watchdog thread reads it too."""
        self._counters = LoopCounters()
        self._gc = GcPauses()
        self._sites: dict[str, list[float]] = {}
        """Site → [count, total s, max s] of the slow iterations blamed on it."""
        self._floor = min(HEALTH_FLOOR, self.slow_callback_duration)
        """Iterations and delays shorter are counted, not placed (`LoopCounters`); an
        iteration under it is never reported slow, so it is at most the slow threshold."""
        self._debug = False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """`EventLoop`'s, which is asyncio's API: declared here for the iteration's calls."""
        raise NotImplementedError

    # -- time and scheduling -------------------------------------------------

    def time(self) -> float:
        return monotonic()

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_soon")
            handle: Any = asyncio.Handle(callback, args, self, context)  # type: ignore[arg-type]
            if not _COMPILED and handle._source_traceback:  # compiled: no frame of ours
                del handle._source_traceback[-1]
        else:
            handle = _new_handle(Handle)
            ctx = copy_context() if context is None else context
            if _COMPILED:
                _fill_handle(handle, callback, args, self, ctx)  # noqa: F821 (loop.pxd)
            else:
                handle._callback = callback
                handle._args = args
                handle._loop = self
                handle._context = ctx
                handle._cancelled = False
        self._ready.append(handle)
        return handle  # type: ignore[no-any-return]

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        timer: Any = self.call_at(self.time() + delay, callback, *args, context=context)
        if not _COMPILED and timer._source_traceback:  # compiled: no frame of ours
            del timer._source_traceback[-1]
        return timer  # type: ignore[no-any-return]

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
            timer: Any = asyncio.TimerHandle(when, callback, args, self, context)  # type: ignore[arg-type]
            if not _COMPILED and timer._source_traceback:  # compiled: no frame of ours
                del timer._source_traceback[-1]
            timer._scheduled = True
        else:
            timer = _new_handle(TimerHandle)
            ctx = copy_context() if context is None else context
            if _COMPILED:
                _fill_handle(timer, callback, args, self, ctx)  # noqa: F821 (loop.pxd)
                _fill_timer(timer, when)  # noqa: F821 (loop.pxd)
            else:
                timer._callback = callback
                timer._args = args
                timer._loop = self
                timer._context = ctx
                timer._cancelled = False
                timer._when = when
                timer._scheduled = True
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer  # type: ignore[no-any-return]

    def _check_callback(self, callback: object, method: str) -> None:
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    def _check_thread(self) -> None:
        if self._thread_id is not None and threading.get_ident() != self._thread_id:
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other than the current one"
            )

    def _timer_handle_cancelled(self, handle: Any) -> None:
        """asyncio's `TimerHandle.cancel()` reports here; only timers still queued count."""
        if handle._scheduled:
            self._timers_cancelled += 1

    # -- descriptors ---------------------------------------------------------

    # The interest mask is derived from the two dicts rather than kept in a
    # third: 5000 idle connections should cost as little memory as possible.

    def _change(self, fd: int, old: int, new: int) -> None:
        if not old:
            self.poller.register(fd, new)
        elif not new:
            self.poller.unregister(fd)
        else:
            self.poller.modify(fd, new)

    def _add_reader(self, fd: int, callback: IOCallback) -> None:
        """The transports' path: `callback()` is called with no handle, straight from the poller."""
        if fd not in self._readers:
            w = WRITE if fd in self._writers else 0
            self._change(fd, w, READ | w)
        self._readers[fd] = callback

    def _remove_reader(self, fd: int) -> bool:
        if self._readers.pop(fd, None) is None:
            return False
        w = WRITE if fd in self._writers else 0
        self._change(fd, READ | w, w)
        return True

    def _add_writer(self, fd: int, callback: IOCallback) -> None:
        if fd not in self._writers:
            r = READ if fd in self._readers else 0
            self._change(fd, r, WRITE | r)
        self._writers[fd] = callback

    def _remove_writer(self, fd: int) -> bool:
        if self._writers.pop(fd, None) is None:
            return False
        r = READ if fd in self._readers else 0
        self._change(fd, WRITE | r, r)
        return True

    def _compact_timers(self) -> None:
        """Drop cancelled timers once they are half the heap: O(1) amortised per cancel.

        Cancelled timers that reach the head are popped anyway; a rebuild is
        for those buried behind later ones.  Its fixed cost (a frame, a list,
        a heapify) is spread over at least `_COMPACT_AFTER` cancellations: a
        request that arms and cancels one timeout (aiohttp's) would otherwise
        rebuild a three-entry heap every other request.
        """
        timers = self._timers
        kept = []
        for entry in timers:
            if entry[2]._cancelled:
                entry[2]._scheduled = False
            else:
                kept.append(entry)
        heapq.heapify(kept)
        timers[:] = kept
        self._timers_cancelled = 0

    def _next_timeout(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2]._cancelled:
            heapq.heappop(timers)[2]._scheduled = False
            self._timers_cancelled -= 1
        if self._ready or self._stopping:
            return 0.0
        if timers:
            # Capped: poll/epoll take an int of ms, so > ~24.8 days overflows.
            return min(max(timers[0][0] - self.time(), 0.0), MAX_WAIT)
        return None

    def _run_once(self) -> None:
        """One iteration, in asyncio's order with no handle per I/O event.

        asyncio queues a handle per ready descriptor and runs, in order: what
        was ready before the wait, the I/O callbacks, the timers due when the
        wait returned; anything those schedule waits for the next iteration.
        This loop keeps that order (so cancellations and wake-ups interleave
        exactly as on asyncio) but calls the I/O callbacks directly.

        Debug mode is a branch in this function, as in asyncio's `_run_once`
        (per handle, and once for the whole I/O block so the per-event loop
        carries no check), not a second iteration function: the order, the
        stats and the slow-iteration report are the same code in both modes,
        and `set_debug()` takes effect from the next iteration even while the
        loop runs.  `_running.now` is one store per callback; it is cleared once
        per iteration, after the last callback, so a finished handle (and its
        task) does not outlive the iteration that ran it.
        """
        ready = self._ready
        timers = self._timers
        if self._timers_cancelled > _COMPACT_AFTER and self._timers_cancelled * 2 > len(timers):
            self._compact_timers()
        if ready or self._stopping:
            timeout: float | None = 0.0
        elif timers:
            timeout = self._next_timeout()
        else:
            timeout = None
        self._busy_since = 0.0
        compiled = _COMPILED
        if compiled and self.poller is self._epoll:
            events = _epoll_wait(self._epfd, timeout)  # noqa: F821 (loop.pxd)
        else:
            events = self.poller.poll(timeout)
        now = _c_monotonic() if compiled else monotonic()  # noqa: F821 (loop.pxd)
        if compiled:
            # Compiled code has no eval breaker: run pending Python signal handlers here
            # (SIGINT's KeyboardInterrupt, a profiler's SIGALRM), as the interpreter would.
            _check_signals()  # noqa: F821 (loop.pxd)
        self._busy_since = now
        debug = self._debug
        running = self._running
        stats = self._counters
        stats.iterations += 1
        n = len(ready)
        due: list[Any] | None = None
        if timers:
            clock = self.time  # asyncio's timers follow `loop.time()`; `now` stays the real clock
            end = (now if clock is monotonic else clock()) + self._clock_resolution
            if timers[0][0] <= end:
                due = self._pop_due(end)
        if n:
            stats.callbacks += n
            popleft = ready.popleft
            for _ in range(n):
                handle = popleft()
                if (_cancelled(handle) if compiled else handle._cancelled):  # noqa: F821
                    continue
                running.now = handle
                if debug:
                    self._run_timed(handle)
                    continue
                try:
                    if compiled:
                        _run_handle(handle)  # noqa: F821 (loop.pxd)
                    else:
                        handle._context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._handle_failed(handle, exc)
            handle = None
        if events:
            stats.events += len(events)
            if debug:
                self._run_io_timed(events)
            else:
                readable = self.poller.READABLE
                writable = self.poller.WRITABLE
                readers = self._readers
                writers = self._writers
                for fd, bits in events:
                    if bits & readable:
                        cb = readers.get(fd)
                        if cb is not None:
                            running.now = cb
                            try:
                                cb()
                            except (SystemExit, KeyboardInterrupt):
                                raise
                            except BaseException as exc:
                                self._callback_failed(cb, exc)
                    if bits & writable:
                        cb = writers.get(fd)
                        if cb is not None:
                            running.now = cb
                            try:
                                cb()
                            except (SystemExit, KeyboardInterrupt):
                                raise
                            except BaseException as exc:
                                self._callback_failed(cb, exc)
        if due is not None:
            if due:  # how late the first one runs: after this iteration's callbacks and I/O
                stats.timer_delays += 1
                late = self.time() - due[0]._when
                if late >= self._floor:  # nearly always (waits round up to whole ms)
                    ns = int(late * 1e9)
                    e = ns.bit_length() - 8  # histogram.slot_of, inlined: no call per timer
                    stats.delay[((e << 7) + (ns >> e)) if e > 0 else ns] += 1
            stats.timer_callbacks += len(due)
            for i in range(len(due)):
                handle, due[i] = due[i], None  # a finished task must not outlive its step
                if (_cancelled(handle) if compiled else handle._cancelled):  # noqa: F821
                    continue
                running.now = handle
                if debug:
                    self._run_timed(handle)
                    continue
                try:
                    if compiled:
                        _run_handle(handle)  # noqa: F821 (loop.pxd)
                    else:
                        handle._context.run(handle._callback, *handle._args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._handle_failed(handle, exc)
            handle = None
        running.now = None
        busy = (_c_monotonic() if compiled else monotonic()) - now  # noqa: F821
        stats.busy += busy
        if busy > stats.max_lag:
            stats.max_lag = busy
        if busy >= self._floor:
            self._record_busy(now, busy, events)

    def _record_busy(self, started: float, busy: float, events: list[tuple[int, int]]) -> None:
        """An iteration of at least the floor: its slot, and the report if it was slow.

        The callbacks it leaves queued wait it out: each is a delay sample of
        `busy` (the ones a short iteration leaves are counted under the floor).
        """
        stats = self._counters
        slot = slot_of(int(busy * 1e9))
        stats.iteration[slot] += 1
        if self._ready:
            stats.delay[slot] += len(self._ready)
        if busy >= self.slow_callback_duration and self._watch:
            self._report_slow(started, busy, len(events))

    def _pop_due(self, end: float) -> list[Any]:
        timers = self._timers
        pop = heapq.heappop
        due = []
        while timers and timers[0][0] <= end:
            timer = pop(timers)[2]
            timer._scheduled = False
            if timer._cancelled:
                self._timers_cancelled -= 1
            else:
                due.append(timer)
        return due

    def _run_timed(self, handle: Any) -> None:
        """Debug mode's callback: asyncio's `Handle._run` (its messages), timed and logged."""
        t0 = self.time()
        try:
            handle._run()
        finally:
            self._running.now = None  # the exception handler names only the handle it is in
        dt = self.time() - t0
        if dt >= self.slow_callback_duration:
            aio_log.warning("Executing %s took %.3f seconds", _format_handle(handle), dt)
        # A failed task's traceback keeps this frame (through f_back); it must
        # not keep the handle, and through it the task, alive too.
        handle = None

    def _run_io_timed(self, events: list[tuple[int, int]]) -> None:
        """Debug mode's I/O callbacks, in the same order, each timed as asyncio times handles.

        The fast path's loop over `events` stays free of a per-event debug check.
        """
        masks = ((self._readers, self.poller.READABLE), (self._writers, self.poller.WRITABLE))
        for fd, bits in events:
            for table, mask in masks:
                cb = table.get(fd) if bits & mask else None
                if cb is None:
                    continue
                self._running.now = cb
                t0 = self.time()
                try:
                    cb()
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._callback_failed(cb, exc)
                finally:
                    self._running.now = None
                dt = self.time() - t0
                if dt >= self.slow_callback_duration:
                    owner = getattr(cb, "__self__", None)
                    what = (
                        _format_handle(owner)
                        if isinstance(owner, asyncio.Handle)
                        else describe_callback(cb)
                    )
                    aio_log.warning("Executing %s took %.3f seconds", what, dt)

    def _report_slow(self, started: float, busy: float, n_events: int) -> None:
        """Log a slow iteration and count it under its site.

        When the collector ran for at least half of the stall (`GcPauses`),
        the collector is the site and the warning says so: a gen-2
        collection over a large heap is not the code it happened to
        interrupt, and the fix (fewer long-lived objects, `gc.freeze()`,
        thresholds) is not the offload the usual warning suggests.
        """
        self._counters.slow_iterations += 1
        watchdog = self._watchdog
        described = watchdog.describe_stall(started, busy) if watchdog is not None else None
        if described is None:
            what = f"{n_events} I/O events and the due callbacks (not sampled)"
            site = "I/O events and due callbacks (not sampled)"
        else:
            what, site = described
        g = self._gc
        in_gc = g.iter_total if g.iter_start == started else 0.0
        if in_gc * 2 >= busy:
            # the collector holds the GIL: a watchdog that missed its ticks is not a stopped process
            running_in = f", in {what}" if site != NOT_RUNNING_SITE else ""
            site = f"{GC_SITE} (generation {g.last_generation})"
            log.warning(
                "slow callback: the loop was blocked for %.0f ms, %.0f ms of it by the garbage "
                "collector (generation %d)%s (fewer long-lived objects, gc.freeze() after "
                "startup, or gc.set_threshold())",
                busy * 1000,
                in_gc * 1000,
                g.last_generation,
                running_in,
            )
        else:
            log.warning(
                "slow callback: the loop was blocked for %.0f ms by %s "
                "(move blocking or CPU-heavy work off the loop: see muxio.offload)",
                busy * 1000,
                what,
            )
        sites = self._sites
        entry = sites.get(site)
        if entry is None:
            if len(sites) >= MAX_SITES:
                site = OTHER_SITE
                entry = sites.get(site)
            if entry is None:
                entry = sites[site] = [0, 0.0, 0.0]
        entry[0] += 1
        entry[1] += busy
        if busy > entry[2]:
            entry[2] = busy
        record_stall(site, what, started, busy)

    def slow_sites(self, top: int = 10) -> list[SlowSite]:
        """The `top` sites by total blocked time, most first (see `_report_slow`)."""
        ranked = sorted(self._sites.items(), key=lambda item: item[1][1], reverse=True)
        return [
            SlowSite(site, int(n), round(total * 1000, 3), round(longest * 1000, 3))
            for site, (n, total, longest) in ranked[:top]
        ]

    def _callback_failed(self, callback: object, exc: BaseException) -> None:
        self.call_exception_handler(
            {"message": f"Exception in callback {describe_callback(callback)}", "exception": exc}
        )

    def _handle_failed(self, handle: Any, exc: BaseException) -> None:
        context: dict[str, Any] = {
            "message": f"Exception in callback {describe_callback(handle._callback)}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)


class EventLoop(_LoopCore, SocketOps, asyncio.AbstractEventLoop):  # type: ignore[misc]
    """A single-threaded loop over one `Poller`, and a drop-in asyncio event loop.

    Only `call_soon_threadsafe` may be called from another thread; everything
    else belongs to the thread that runs the loop.  `slow_callback_ms` (0 or
    None: off) starts the watchdog thread on the first run; it names the
    callback or coroutine that holds the loop longer than that.
    """

    def __init__(
        self,
        poller: str | Poller = "auto",
        *,
        slow_callback_ms: float | None = 100.0,
    ) -> None:
        super().__init__(
            new_poller(poller) if isinstance(poller, str) else poller, slow_callback_ms
        )
        self._fileobjs: dict[int, Any] = {}
        """fd → the object `add_reader`/`add_writer` got: it finds its fd once closed."""
        if type(self).time is EventLoop.time:
            # the clock itself, no Python frame: `mock.patch.object(loop, "time")` still works
            self.time = monotonic  # type: ignore[method-assign]
        self._signal_handlers: dict[int, Any] = {}
        self._old_wakeup_fd: int | None = None
        self._tls_read_buffer: memoryview | None = None
        """What every TLS connection receives into (`transports.tls`), made on first use."""
        self._entry_frame: FrameType | None = None
        """The frame that runs the loop (compiled: its caller's): where a profile's stacks end."""
        self._coro_tracking: int | None = None
        self._exception_handler: Callable[[Any, dict[str, Any]], object] | None = None
        self._task_factory: Any = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._add_reader(self._ssock.fileno(), self._read_from_self)
        self.set_debug(_debug_from_environment())

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} poller={self.poller.name} running={self.is_running()} "
            f"closed={self._closed} debug={self._debug}>"
        )

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        """Schedule from any thread and wake the poller through the self-pipe."""
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle: Any
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
            handle = asyncio.Handle(callback, args, self, context)
            if not _COMPILED and handle._source_traceback:  # compiled: no frame of ours
                del handle._source_traceback[-1]
        else:
            handle = Handle(callback, args, self, context)
        self._ready.append(handle)
        self._write_to_self()
        return handle  # type: ignore[no-any-return]

    def _write_to_self(self) -> None:
        with contextlib.suppress(OSError):
            self._csock.send(b"\0")

    def _read_from_self(self) -> None:
        while True:
            try:
                data = self._ssock.recv(4096)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum:
                    handle = self._signal_handlers.get(signum)
                    if handle is not None and not handle._cancelled:
                        self._ready.append(handle)
            if len(data) < 4096:
                return  # drained: a byte written since wakes the (level-triggered) poller again

    # -- futures and tasks ---------------------------------------------------

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        """`name=`, and `context=` from Python 3.11, as the running asyncio accepts."""
        if self._closed:
            raise RuntimeError("Event loop is closed")
        name = kwargs.pop("name", None)
        if self._task_factory is None:
            task = asyncio.Task(coro, loop=self, name=name, **kwargs)
        else:
            task = self._task_factory(self, coro, **kwargs)
            if name is not None:
                task.set_name(name)
        return task

    def set_task_factory(self, factory: Any) -> None:
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Any:
        return self._task_factory

    def forget_fd(self, fd: int) -> None:
        """Drop every interest in `fd` at once, before its owner closes it."""
        had_reader = self._readers.pop(fd, None) is not None
        if (self._writers.pop(fd, None) is not None) or had_reader:
            self.poller.unregister(fd)

    def _ensure_fd_no_transport(self, fd: int) -> None:
        for table in (self._readers, self._writers):
            owner = getattr(table.get(fd), "__self__", None)
            if isinstance(owner, asyncio.BaseTransport):
                raise RuntimeError(f"File descriptor {fd!r} is used by transport {owner!r}")

    def _user_handle(self, callback: Callable[..., object], args: tuple[Any, ...]) -> IOCallback:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_callback(callback, "add_reader/add_writer")
        handle = Handle(callback, args, self, None)
        return handle._run

    def _registered_fd(self, fileobj: Any) -> int:
        """asyncio's selector lookup: a closed object still finds the fd it was added with.

        anyio removes a socket's reader from a done-callback that runs after
        the socket is closed; asyncio's selector searches its keys by object.
        """
        try:
            return _fileno(fileobj)
        except ValueError:
            for fd, obj in self._fileobjs.items():
                if obj is fileobj:
                    for table in (self._readers, self._writers):
                        if isinstance(getattr(table.get(fd), "__self__", None), asyncio.Handle):
                            return fd
                    del self._fileobjs[fd]  # stale: its number now serves someone else
                    break
            raise

    def _forget_fileobj(self, fd: int) -> None:
        if fd not in self._readers and fd not in self._writers:
            self._fileobjs.pop(fd, None)

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        """Call `callback(*args)` whenever `fd` is readable (or has hung up / failed)."""
        fileobj, fd = fd, _fileno(fd)
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, self._user_handle(callback, args))
        if not isinstance(fileobj, int):
            self._fileobjs[fd] = fileobj

    def remove_reader(self, fd: Any) -> bool:
        fd = self._registered_fd(fd)
        self._ensure_fd_no_transport(fd)
        if self._closed:
            return False
        removed = self._remove_reader(fd)
        self._forget_fileobj(fd)
        return removed

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        """Call `callback(*args)` whenever `fd` is writable (or has hung up / failed)."""
        fileobj, fd = fd, _fileno(fd)
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, self._user_handle(callback, args))
        if not isinstance(fileobj, int):
            self._fileobjs[fd] = fileobj

    def remove_writer(self, fd: Any) -> bool:
        fd = self._registered_fd(fd)
        self._ensure_fd_no_transport(fd)
        if self._closed:
            return False
        removed = self._remove_writer(fd)
        self._forget_fileobj(fd)
        return removed

    # -- signals -------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        """Run `callback` on the loop, never inside the signal handler itself.

        The C-level handler writes the signal number to the self-pipe
        (`signal.set_wakeup_fd`), which wakes the poller; the Python-level
        handler does nothing.  Only the main thread may install handlers.
        """
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        if self._closed:
            raise RuntimeError("Event loop is closed")
        try:
            # every time, as asyncio does: outside the main thread this raises
            # ValueError, and a second handler must be refused there like the first
            previous = signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = previous
        self._signal_handlers[sig] = Handle(callback, args, self, None)
        try:
            signal.signal(sig, _noop_signal_handler)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            self._restore_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        self._check_signal(sig)
        if self._signal_handlers.pop(sig, None) is None:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if not self._signal_handlers:
            self._restore_wakeup_fd()
        return True

    def _restore_wakeup_fd(self) -> None:
        if self._old_wakeup_fd is not None and not self._signal_handlers:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None

    @staticmethod
    def _check_signal(sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    # -- running -------------------------------------------------------------

    def is_running(self) -> bool:
        return self._thread_id is not None

    def is_closed(self) -> bool:
        return self._closed

    def stop(self) -> None:
        """Return from `run_forever` after the current iteration."""
        self._stopping = True

    def _check_running(self) -> None:
        if self._thread_id is not None:
            raise RuntimeError("This event loop is already running")
        if _events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        """Run until `stop()`; a stop requested beforehand still runs one iteration."""
        if self._closed:
            raise RuntimeError("Event loop is closed")
        self._check_running()
        if self._watch and self._watchdog is None:
            self._watchdog = Watchdog(self, self.slow_callback_duration)
            self._watchdog.start()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = thread_id = threading.get_ident()
        self._entry_frame = sys._getframe()
        if not self._counters.started:
            self._counters.started = monotonic()
        _watch_gc(self, thread_id)
        try:
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook
            )
            _events._set_running_loop(self)
            run_once = self._run_once  # through the instance: asyncio's tests replace it
            while True:
                run_once()
                if self._stopping:
                    break
        finally:
            _unwatch_gc(thread_id)
            self._stopping = False
            self._thread_id = None
            self._entry_frame = None
            self._busy_since = 0.0
            self._running.now = None
            _events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def run_until_complete(self, future: Any) -> Any:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        self._check_running()
        new_task = not asyncio.isfuture(future)
        future = asyncio.ensure_future(future, loop=self)
        if new_task:
            future._log_destroy_pending = False
        future.add_done_callback(_stop_on_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_on_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def stats(self) -> dict[str, float]:
        """A snapshot of what the loop did, as `Server.stats()` and `Offloader.stats()`.

        ``iterations``: trips through the poller; ``events``: ready
        descriptors it reported (``events_per_poll``: their mean per trip);
        ``callbacks``: handles and timers run; ``slow_iterations``:
        iterations that held the loop past ``slow_callback_ms``;
        ``max_lag_ms``: the longest of all.

        Health, always recorded: ``iteration_p50_ms``/``iteration_p99_ms``:
        the busy part of an iteration (poller return to the next wait);
        ``delay_p50_ms``/``delay_p99_ms``/``delay_max_ms``: how late work
        ran (per iteration with due timers, how late the first one ran past
        its deadline; per ready callback, how long the iteration that queued
        it held the loop); both histograms count what is under
        `HEALTH_FLOOR` (50 µs) without placing it, as 0.025 ms;
        ``utilisation``: busy seconds / wall seconds
        since the loop first ran (0-1); ``ready``, ``timers``: the ready
        queue and the live timers now; ``tasks``: tasks alive on this loop
        now; ``gc_pauses``, ``gc_pause_ms``, ``gc_pause_max_ms``: garbage
        collections on the loop's thread while it ran, their total and
        longest pause.  A new dict each call, so it can be kept and
        compared with a later one.
        """
        return self._stats(*self._histograms(), monotonic())

    def _histograms(self) -> tuple[dict[int, int], dict[int, int]]:
        """The iteration and delay histograms, sparse, with what is under the floor put in."""
        c = self._counters
        return (
            _with_floor(c.iteration, c.iterations, self._floor),
            _with_floor(c.delay, c.callbacks + c.timer_delays, self._floor),
        )

    def _stats(
        self, iteration: dict[int, int], delay: dict[int, int], now: float
    ) -> dict[str, float]:
        c = self._counters
        g = self._gc
        wall = now - c.started if c.started else 0.0
        delay_max = _largest(delay)
        max_lag = c.max_lag * 1e9
        return {
            "iterations": c.iterations,
            "events": c.events,
            "events_per_poll": round(c.events / c.iterations, 3) if c.iterations else 0.0,
            "callbacks": c.callbacks + c.timer_callbacks,
            "slow_iterations": c.slow_iterations,
            "max_lag_ms": round(c.max_lag * 1000, 3),
            "iteration_p50_ms": quantile_ms(iteration, 0.5, max_lag),
            "iteration_p99_ms": quantile_ms(iteration, 0.99, max_lag),
            "delay_p50_ms": quantile_ms(delay, 0.5, delay_max),
            "delay_p99_ms": quantile_ms(delay, 0.99, delay_max),
            "delay_max_ms": round(delay_max / 1e6, 3),
            "utilisation": round(min(c.busy / wall, 1.0), 4) if wall else 0.0,
            "ready": len(self._ready),
            "timers": max(len(self._timers) - self._timers_cancelled, 0),
            "tasks": len(asyncio.all_tasks(self)),
            "gc_pauses": g.count,
            "gc_pause_ms": round(g.total * 1000, 3),
            "gc_pause_max_ms": round(g.max * 1000, 3),
        }

    def health(self, top: int = 10) -> LoopHealth:
        """`stats()` with what a flat dict cannot hold: the histograms and the top slow sites.

        `muxio.monitor()` takes these at an interval and reports what
        changed between two of them.
        """
        c = self._counters
        now = monotonic()
        iteration, delay = self._histograms()
        stats = self._stats(iteration, delay, now)
        return LoopHealth(
            time=now,
            wall_s=now - c.started if c.started else 0.0,
            busy_s=c.busy,
            iterations=c.iterations,
            iteration_ns=iteration,
            delay_ns=delay,
            delay_max_ms=stats["delay_max_ms"],
            ready=int(stats["ready"]),
            timers=int(stats["timers"]),
            tasks=int(stats["tasks"]),
            gc_pauses=int(stats["gc_pauses"]),
            gc_pause_ms=stats["gc_pause_ms"],
            gc_pause_max_ms=stats["gc_pause_max_ms"],
            gc_generations=list(self._gc.generations),
            sites=self.slow_sites(top),
            stats=stats,
        )

    async def profile(
        self, seconds: float, rate: float = 1000.0, clock: str = "cpu"
    ) -> _profiler.Profile:
        """Sample what this loop runs for `seconds`: loop time by task and coroutine chain.

        `clock="cpu"` counts CPU time, sampled by the loop thread itself
        (cheap enough to run on a loaded server, but at most one sample per
        kernel tick); `"wall"` also counts blocking calls (`time.sleep`,
        synchronous I/O), at `rate` on the compiled build (a GIL-free thread).
        See `muxio.profiler`.
        """
        return await _profiler.profile(self, seconds, rate, clock)

    @property
    def _selector(self) -> Poller:
        """asyncio's name for the multiplexer; some of CPython's tests name it in messages."""
        return self.poller

    def _stop_serving(self, sock: socket.socket) -> None:
        """asyncio's private hook for closing a listening socket (CPython's tests call it)."""
        self._remove_reader(sock.fileno())
        sock.close()

    def close(self) -> None:
        if self._thread_id is not None:
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            aio_log.debug("Close %r", self)
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        self.forget_fd(self._ssock.fileno())
        self._ssock.close()
        self._csock.close()
        self.poller.close()
        self._fileobjs.clear()
        self._ready.clear()
        self._timers.clear()
        self._executor_shutdown_called = True
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_csock", None) is not None and not self._closed:
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- debug mode and the exception handler --------------------------------

    def get_debug(self) -> bool:
        return self._debug

    def set_debug(self, enabled: bool) -> None:
        """Also rebinds `get_debug` to the new value's C-level `__bool__`.

        asyncio's C `Future` and `Task` ask the loop `get_debug()` every time
        one is made (three times per aiohttp request); a method-wrapper answers
        without a Python frame.
        """
        self._debug = bool(enabled)
        self.get_debug = self._debug.__bool__  # type: ignore[method-assign]
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, self._debug)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if enabled == (self._coro_tracking is not None):
            return
        if enabled:
            self._coro_tracking = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            assert self._coro_tracking is not None
            sys.set_coroutine_origin_tracking_depth(self._coro_tracking)
            self._coro_tracking = None

    def get_exception_handler(self) -> Any:
        return self._exception_handler

    def set_exception_handler(self, handler: Any) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log the message and every other key of `context`, as asyncio does."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = False
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        created = getattr(self._running.now, "_source_traceback", None) if self._debug else None
        if "source_traceback" not in context and created:
            context["handle_traceback"] = created
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key in ("source_traceback", "handle_traceback"):
                import traceback

                what = "Object" if key == "source_traceback" else "Handle"
                value = f"{what} created at (most recent call last):\n" + "".join(
                    traceback.format_list(value)
                ).rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        aio_log.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                aio_log.error("Exception in default exception handler", exc_info=True)
            return
        try:
            thing = context.get("task") or context.get("future") or context.get("handle")
            ctx = getattr(thing, "get_context", None)
            ctx = ctx() if ctx is not None else None
            if ctx is not None and hasattr(ctx, "run"):
                ctx.run(handler, self, context)
            else:
                handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                aio_log.error(
                    "Exception in default exception handler while handling an unexpected "
                    "error in custom exception handler",
                    exc_info=True,
                )

    # -- async generators and the default executor ---------------------------

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self._closed:
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                "loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of asynchronous "
                        f"generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:  # type: ignore[override]
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = self._default_executor = concurrent.futures.ThreadPoolExecutor(
                    thread_name_prefix="asyncio"
                )
        return asyncio.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: Any) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Join the default executor's threads from a helper thread, so the loop stays free."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        future = self.create_future()

        def shut_down() -> None:
            try:
                executor.shutdown(wait=True)
            except Exception as exc:
                if not self._closed:
                    self.call_soon_threadsafe(_set_exception_unless_done, future, exc)
            else:
                if not self._closed:
                    self.call_soon_threadsafe(_set_result_unless_done, future, None)

        thread = threading.Thread(target=shut_down)
        thread.start()
        try:
            await future
        finally:
            thread.join(timeout)
        if thread.is_alive():
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)

    # -- stream connections and servers --------------------------------------

    def _make_stream(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        *,
        ssl: Any = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        waiter: asyncio.Future[Any] | None = None,
    ) -> asyncio.BaseTransport:
        """Start a transport on `sock`; with `ssl`, under asyncio's `SSLProtocol`.

        Returns the transport the application sees (the SSL layer's, with `ssl`).
        In asyncio's order: `connection_made` on the next loop turn, in a
        copy of this context, and `waiter` woken after it (the SSL layer
        wakes its own once the handshake is done).
        """
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl:
            context = None if isinstance(ssl, bool) else ssl
            driven = self._ssl_protocol(
                protocol,
                context,
                waiter=waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                handshake_timeout=ssl_handshake_timeout,
                shutdown_timeout=ssl_shutdown_timeout,
            )
            UncountedTransport(self, sock, driven).start_soon()
            app_transport: asyncio.BaseTransport = driven._app_transport
            return app_transport
        transport = UncountedTransport(self, sock, protocol)  # type: ignore[arg-type]
        transport.start_soon()
        if waiter is not None:
            self.call_soon(_set_result_unless_done, waiter, None)
        return transport

    def _ssl_protocol(
        self,
        protocol: asyncio.BaseProtocol,
        context: Any,
        *,
        waiter: asyncio.Future[Any] | None = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        handshake_timeout: float | None = None,
        shutdown_timeout: float | None = None,
        call_connection_made: bool = True,
        cls: Any = None,
    ) -> Any:
        """asyncio's TLS layer (`sslproto`) over our transport, on the loop's shared read buffer."""
        from .transports.tls import SharedBufferSSLProtocol

        kwargs: dict[str, Any] = {"ssl_handshake_timeout": handshake_timeout}
        if sys.version_info >= (3, 11):
            kwargs["ssl_shutdown_timeout"] = shutdown_timeout
        if context is None:
            import ssl as ssl_module

            context = ssl_module.create_default_context()
            if server_hostname == "":
                context.check_hostname = False
        return (cls or SharedBufferSSLProtocol)(
            self,
            protocol,
            context,
            waiter,
            server_side,
            server_hostname,
            call_connection_made=call_connection_made,
            **kwargs,
        )

    async def _connect_transport(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl: Any,
        server_hostname: str | None,
        *,
        server_side: bool = False,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_stream(
            sock,
            protocol,
            ssl=ssl,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            waiter=waiter,
        )
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def create_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        ssl: Any = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: socket.socket | None = None,
        local_addr: Any = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        all_errors: bool = False,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _check_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sock = await connect.connect_socket(
                self,
                host,
                port,
                family=family,
                proto=proto,
                flags=flags,
                local_addr=local_addr,
                happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave,
                all_errors=all_errors,
            )
        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        return await self._connect_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def create_unix_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | None = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            sock = await connect.unix_connect_socket(self, os.fspath(path))
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        return await self._connect_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def connect_accepted_socket(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _check_ssl_socket(sock)
        return await self._connect_transport(
            sock,
            protocol_factory,
            ssl,
            "",
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        keep_alive: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
    ) -> Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _check_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            infos = await resolve.resolve_server_hosts(
                self, host, port, family=family, flags=flags
            )
            sockets = listeners.open_tcp_listeners(
                infos,
                backlog=backlog,
                reuse_address=reuse_address,
                reuse_port=reuse_port,
                keep_alive=keep_alive,
            )
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]
        for s in sockets:
            s.setblocking(False)
            s.listen(max(0, backlog))
        server = Server(
            self,
            protocol_factory,
            sockets,
            backlog=backlog,
            ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            count_bytes=False,
        )
        if start_serving:
            server.start()
            await asyncio.sleep(0)
        return server

    async def create_unix_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: Any = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        cleanup_socket: bool | None = None,
    ) -> Server:
        """`cleanup_socket` (3.13's) defaults to the running Python's: before 3.13,
        `close()` leaves the socket file, as asyncio's did."""
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if cleanup_socket is None:
            cleanup_socket = sys.version_info >= (3, 13)
        handed_in = None
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            sock = listeners.bind_unix_listener(path, backlog=backlog, remember=cleanup_socket)
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            if cleanup_socket:
                handed_in = listeners.UnixFile.of(sock)
        sock.setblocking(False)
        sock.listen(max(0, backlog))
        server = Server(
            self,
            protocol_factory,
            [sock],
            backlog=backlog,
            ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            unlink_on_close=cleanup_socket,
            unix_files=[handed_in] if handed_in is not None else [],
            count_bytes=False,
        )
        if start_serving:
            server.start()
            await asyncio.sleep(0)
        return server

    async def start_tls(
        self,
        transport: asyncio.BaseTransport,
        protocol: asyncio.BaseProtocol,
        sslcontext: _ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Transport:
        """Upgrade a connection in place, under asyncio's `SSLProtocol`."""
        import ssl as ssl_module

        if not isinstance(sslcontext, ssl_module.SSLContext):
            raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, "
                            f"got {sslcontext!r}")
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        ssl_protocol = self._ssl_protocol(
            protocol,
            sslcontext,
            waiter=waiter,
            server_side=server_side,
            server_hostname=server_hostname,
            handshake_timeout=ssl_handshake_timeout,
            shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.set_protocol(ssl_protocol)
        conmade = self.call_soon(ssl_protocol.connection_made, transport)
        resume = self.call_soon(transport.resume_reading)  # type: ignore[attr-defined]
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade.cancel()
            resume.cancel()
            raise
        app_transport: asyncio.Transport = ssl_protocol._app_transport
        return app_transport

    async def _sendfile_native(
        self, transport: Any, file: Any, offset: int, count: int | None
    ) -> int:
        """asyncio's hook (CPython's tests replace it): the transport's kernel-copy path."""
        sent: int = await transport._sendfile_native(file, offset, count)
        return sent

    async def sendfile(
        self,
        transport: asyncio.WriteTransport,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        sent: int = await _sendfile.transport_sendfile(
            self, transport, file, offset, count, fallback=fallback
        )
        return sent

    # -- other transport kinds ------------------------------------------------

    async def create_datagram_endpoint(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        from .transports import datagram

        return await datagram.create_datagram_endpoint(  # type: ignore[type-var]
            self, protocol_factory, *args, **kwargs
        )

    async def connect_read_pipe(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], pipe: Any
    ) -> tuple[asyncio.ReadTransport, asyncio.BaseProtocol]:
        from .transports import pipes

        return await pipes.connect_read_pipe(self, protocol_factory, pipe)

    async def connect_write_pipe(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], pipe: Any
    ) -> tuple[asyncio.WriteTransport, asyncio.BaseProtocol]:
        from .transports import pipes

        return await pipes.connect_write_pipe(self, protocol_factory, pipe)

    # asyncio's own methods, not copies: the argument checks, the debug log and
    # the frames are the ones asyncio users and their tools see.  `Popen` reads
    # its exec-error pipe blocking, in the loop thread, on every asyncio loop;
    # checkers such as blockbuster allow that read under these two functions.
    subprocess_exec = _base_events.BaseEventLoop.subprocess_exec
    subprocess_shell = _base_events.BaseEventLoop.subprocess_shell
    _log_subprocess = _base_events.BaseEventLoop._log_subprocess  # type: ignore[attr-defined]

    async def _make_subprocess_transport(
        self,
        protocol: asyncio.SubprocessProtocol,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: Any = None,
        **kwargs: Any,
    ) -> asyncio.SubprocessTransport:
        """The hook `subprocess_exec`/`subprocess_shell` call, as on asyncio's Unix loop."""
        from .transports import subprocess as sp

        return await sp.start_transport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs
        )


def _check_ssl_socket(sock: Any) -> None:
    if sock is None:
        return
    try:
        import ssl as ssl_module
    except ImportError:  # pragma: no cover - Python without ssl
        return
    if isinstance(sock, ssl_module.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _set_result_unless_done(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception_unless_done(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _noop_signal_handler(signum: int, frame: object) -> None:
    """The real work happens on the loop, woken by the wakeup fd."""
