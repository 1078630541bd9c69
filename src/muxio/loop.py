"""The event loop: one thread, one poller, a heap of timers and a ready queue.

Shaped after Redis's `ae.c`: per iteration, wait in the poller until the next
timer is due, run the I/O callbacks of the ready descriptors, then the due
timers and `call_soon` callbacks.  Everything that can be decided once — which
poller bits mean "readable", bound methods, dict lookups — is decided before
the loop starts, because an iteration may carry thousands of events.

Detection and response share this one thread, so the loop measures itself:
each iteration's busy time (from the poller's return to the next wait) feeds
`stats()`, and an iteration longer than `slow_callback` seconds is reported
with what was running, sampled by the optional `Watchdog` thread.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from time import monotonic

from .pollers import READ, WRITE, Poller, new_poller

TYPE_CHECKING = False  # not `from typing`: importing typing costs 1.6 MiB of RSS

if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("muxio")

MAX_WAIT = 86400.0
"""The longest single wait in the poller; a farther timer just costs a wake-up a day."""

IOCallback = Callable[[], object]


class Handle:
    """A scheduled callback that can be cancelled before it runs."""

    __slots__ = ("_args", "_callback", "_cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        return f"<{type(self).__name__} {_describe(self._callback)}{state}>"


class TimerHandle(Handle):
    """A callback due at a point on the loop's monotonic clock."""

    __slots__ = ("_loop", "when")

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: EventLoop,
    ) -> None:
        super().__init__(callback, args)
        self.when = when
        self._loop = loop

    def cancel(self) -> None:
        if not self._cancelled:
            self._cancelled = True
            self._loop._timer_cancelled()


class LoopStats:
    """What the loop did; cheap to keep because it is counted per iteration."""

    __slots__ = ("callbacks", "events", "iterations", "max_lag", "slow_callbacks")

    def __init__(self) -> None:
        self.iterations = 0
        self.events = 0
        self.callbacks = 0
        self.slow_callbacks = 0
        self.max_lag = 0.0
        """The longest stretch, in seconds, the loop spent away from its poller."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoopStats):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LoopStats({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"

    @property
    def events_per_poll(self) -> float:
        return self.events / self.iterations if self.iterations else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "iterations": self.iterations,
            "events": self.events,
            "events_per_poll": round(self.events_per_poll, 3),
            "callbacks": self.callbacks,
            "slow_callbacks": self.slow_callbacks,
            "max_lag_ms": round(self.max_lag * 1000, 3),
        }


def _describe(callback: object) -> str:
    owner = getattr(callback, "__self__", None)
    name = getattr(callback, "__qualname__", None) or repr(callback)
    if owner is not None and not isinstance(owner, type):
        return f"{type(owner).__name__}.{getattr(callback, '__name__', name)}"
    return str(name)


class EventLoop:
    """A single-threaded loop over one `Poller`.

    Only `call_soon_threadsafe` may be called from another thread; everything
    else belongs to the thread that runs the loop.
    """

    def __init__(
        self,
        poller: str | Poller = "auto",
        *,
        slow_callback: float | None = 0.1,
    ) -> None:
        self.poller: Poller = new_poller(poller) if isinstance(poller, str) else poller
        self.slow_callback = slow_callback
        self._readers: dict[int, IOCallback] = {}
        self._writers: dict[int, IOCallback] = {}
        self._ready: deque[Handle] = deque()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timers_cancelled = 0
        self._seq = itertools.count()
        self._stopping = False
        self._running = False
        self._closed = False
        self._thread_id: int | None = None
        self._busy_since = 0.0
        self.stats_data = LoopStats()
        self.slow_sample: tuple[float, str] | None = None
        self._signal_handlers: dict[int, Handle] = {}
        self._old_wakeup_fd: int | None = None
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self.add_reader(self._ssock.fileno(), self._read_from_self)

    # -- time and scheduling -------------------------------------------------

    @staticmethod
    def time() -> float:
        return monotonic()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle:
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        return self.call_at(monotonic() + delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        timer = TimerHandle(when, callback, args, self)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Handle:
        """Schedule from any thread and wake the poller through the self-pipe."""
        handle = Handle(callback, args)
        self._ready.append(handle)
        self._write_to_self()
        return handle

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

    def _timer_cancelled(self) -> None:
        self._timers_cancelled += 1
        if self._timers_cancelled > 64 and self._timers_cancelled * 2 > len(self._timers):
            # In place: `_run_once` holds this list while I/O callbacks run.
            self._timers[:] = [t for t in self._timers if not t[2]._cancelled]
            heapq.heapify(self._timers)
            self._timers_cancelled = 0

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

    def add_reader(self, fd: int, callback: IOCallback) -> None:
        """Call `callback()` whenever `fd` is readable (or has hung up / failed)."""
        if fd not in self._readers:
            w = WRITE if fd in self._writers else 0
            self._change(fd, w, READ | w)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        if self._readers.pop(fd, None) is None:
            return False
        w = WRITE if fd in self._writers else 0
        self._change(fd, READ | w, w)
        return True

    def add_writer(self, fd: int, callback: IOCallback) -> None:
        """Call `callback()` whenever `fd` is writable (or has hung up / failed)."""
        if fd not in self._writers:
            r = READ if fd in self._readers else 0
            self._change(fd, r, WRITE | r)
        self._writers[fd] = callback

    def remove_writer(self, fd: int) -> bool:
        if self._writers.pop(fd, None) is None:
            return False
        r = READ if fd in self._readers else 0
        self._change(fd, WRITE | r, r)
        return True

    def forget_fd(self, fd: int) -> None:
        """Drop every interest in `fd` at once, before its owner closes it."""
        had_reader = self._readers.pop(fd, None) is not None
        if (self._writers.pop(fd, None) is not None) or had_reader:
            self.poller.unregister(fd)

    # -- signals -------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback` on the loop, never inside the signal handler itself.

        The C-level handler writes the signal number to the self-pipe
        (`signal.set_wakeup_fd`), which wakes the poller; the Python-level
        handler does nothing.  Only the main thread may install handlers.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be added from the main thread")
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(
                self._csock.fileno(), warn_on_full_buffer=False
            )
        self._signal_handlers[sig] = Handle(callback, args)
        signal.signal(sig, _noop_signal_handler)
        with contextlib.suppress(AttributeError, OSError):
            signal.siginterrupt(sig, False)

    def remove_signal_handler(self, sig: int) -> bool:
        if self._signal_handlers.pop(sig, None) is None:
            return False
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, default)
        if not self._signal_handlers and self._old_wakeup_fd is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        return True

    # -- running -------------------------------------------------------------

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def stop(self) -> None:
        """Return from `run_forever` after the current iteration."""
        self._stopping = True

    def run_forever(self) -> None:
        """Run until `stop()`; a stop requested beforehand still runs one iteration."""
        if self._running:
            raise RuntimeError("the loop is already running")
        if self._closed:
            raise RuntimeError("the loop is closed")
        self._running = True
        self._thread_id = threading.get_ident()
        try:
            while True:
                self._run_once()
                if self._stopping:
                    break
        finally:
            self._stopping = False
            self._running = False
            self._busy_since = 0.0

    def _run_once(self) -> None:
        ready = self._ready
        timers = self._timers
        if ready or self._stopping:
            timeout: float | None = 0.0
        elif timers:
            # Capped: poll/epoll take an int of ms, so > ~24.8 days overflows.
            timeout = min(timers[0][0] - monotonic(), MAX_WAIT)
        else:
            timeout = None
        self._busy_since = 0.0
        events = self.poller.poll(timeout)
        now = monotonic()
        self._busy_since = now
        stats = self.stats_data
        stats.iterations += 1
        if events:
            stats.events += len(events)
            readable = self.poller.READABLE
            writable = self.poller.WRITABLE
            readers = self._readers
            writers = self._writers
            for fd, bits in events:
                if bits & readable:
                    cb = readers.get(fd)
                    if cb is not None:
                        try:
                            cb()
                        except Exception:
                            self._callback_failed(cb)
                if bits & writable:
                    cb = writers.get(fd)
                    if cb is not None:
                        try:
                            cb()
                        except Exception:
                            self._callback_failed(cb)
        if timers and timers[0][0] <= now:
            pop = heapq.heappop
            while timers and timers[0][0] <= now:
                timer = pop(timers)[2]
                if timer._cancelled:
                    self._timers_cancelled -= 1
                else:
                    ready.append(timer)
        n = len(ready)
        if n:
            stats.callbacks += n
            popleft = ready.popleft
            for _ in range(n):
                handle = popleft()
                if not handle._cancelled:
                    try:
                        handle._callback(*handle._args)
                    except Exception:
                        self._callback_failed(handle._callback)
        busy = monotonic() - now
        if busy > stats.max_lag:
            stats.max_lag = busy
        if self.slow_callback is not None and busy >= self.slow_callback:
            self._report_slow(now, busy, len(events))

    def _report_slow(self, started: float, busy: float, n_events: int) -> None:
        self.stats_data.slow_callbacks += 1
        sample = self.slow_sample
        if sample is not None and sample[0] == started:
            what = sample[1]
        else:
            what = f"{n_events} I/O events and the due callbacks (not sampled)"
        log.warning(
            "slow callback: the loop was blocked for %.0f ms by %s "
            "(move blocking or CPU-heavy work off the loop: see muxio.offload)",
            busy * 1000,
            what,
        )

    def _callback_failed(self, callback: object) -> None:
        log.exception("exception in callback %s", _describe(callback))

    def stats(self) -> LoopStats:
        return self.stats_data

    def close(self) -> None:
        if self._running:
            raise RuntimeError("cannot close a running loop")
        if self._closed:
            return
        self._closed = True
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        self.forget_fd(self._ssock.fileno())
        self._ssock.close()
        self._csock.close()
        self.poller.close()
        self._ready.clear()
        self._timers.clear()


def _noop_signal_handler(signum: int, frame: object) -> None:
    """The real work happens on the loop, woken by the wakeup fd."""


def is_transient(exc: OSError) -> bool:
    """Errors that mean "try again later", never "this connection is gone"."""
    return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
