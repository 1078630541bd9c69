# cython: annotation_typing=False
"""The compiled build's wall-clock sampler: a thread that never takes the GIL.

The pure build's wall clock signals the loop on every tick, idle or not
(`ITIMER_REAL`): on the compiled loop, whose poller returns to run a whole
iteration after a signal, that cost 24.5 % CPU per request at 1,000
samples/s.  A sampler thread of the usual kind sees the loop only when the
loop lets go of the GIL, and takes it from the loop on every sample.

Here a thread that has let go of the GIL for good sleeps to each tick on
`CLOCK_MONOTONIC` and reads the loop's `_busy_since` (a C double of
`_LoopCore`).  A tick that finds the loop in its poller only adds to the
idle time: the loop is not woken.  A busy one sends the main thread a
SIGALRM with `pthread_kill`, whose handler (`on_signal`, in C) is handed the
frame the loop is in, as a timer's would be, walks it with the C API, and
weighs the sample by the busy time the thread counted since the last one
(4.1 to 4.7 % CPU per request at 1,000 samples/s: docs/observability.md).
`Py_AddPendingCall` would spare the signal, but on CPython 3.11 a call
queued from another thread waits for the main thread's next GIL hand-over:
a loop burning CPU never ran it.

While a sample is pending the ticks add their time to it, so a call that
holds the loop (`time.sleep(0.2)`) is paid for by the frame it runs in.  A
tick whose busy period ended before its signal was handled came in the
loop's own code after the last callback, and goes to the loop.  Ticks are
jittered (0.5 to 1.5 periods) so they cannot phase-lock onto a workload's
period.  The pure build has none of this (`AVAILABLE` is False).
"""

from __future__ import annotations

import _thread
from typing import TYPE_CHECKING, Any

try:
    import cython
except ImportError:  # the pure build: Cython is a build tool, never a run-time dependency
    AVAILABLE = False
else:
    AVAILABLE = cython.compiled

if TYPE_CHECKING:
    from collections.abc import Callable

    _c_prepare: Callable[..., int]
    _c_sample: Callable[[Any], int]
    _c_request_stop: Callable[[], None]
    _c_forget: Callable[[], None]
    _c_ticks: Callable[[], int]
    _c_idle_seconds: Callable[[], float]
    _c_run: Callable[[], None]
    """The compiled build's (_sampler.pxd); the pure build never calls them."""

_done = _thread.allocate_lock()
"""Held while the thread samples: one loop at a time."""


def start(
    loop: Any,
    rate: float,
    signum: int,
    thread_id: int,
    counts: dict[tuple[object, ...], float],
    codes: dict[int, Any],
    stop_ids: frozenset[int],
    own_ids: frozenset[int],
    task_of: Any,
    entry: Any = None,
) -> None:
    """Sample `loop` (a compiled `_LoopCore`): busy ticks send `signum` to `thread_id`.

    `on_signal`, installed for `signum` by the caller, adds each sample to
    `counts` as `muxio.profiler.Sampler._record` would: keyed by the task's
    name (`task_of`) and the `id()` of each code object, outermost first,
    cut at the loop's own frames (`stop_ids`) or at `entry`, the frame running
    the loop; `codes` keeps the code objects.
    """
    if _done.locked():
        raise RuntimeError("one loop at a time is sampled by the thread")
    _c_prepare(  # noqa: F821 (_sampler.pxd)
        loop, rate, signum, thread_id, counts, codes, stop_ids, own_ids, task_of, entry
    )
    _done.acquire()
    try:
        _thread.start_new_thread(_thread_main, ())
    except BaseException:
        _done.release()
        _c_forget()  # noqa: F821 (_sampler.pxd)
        raise


def on_signal(signum: int, frame: Any) -> None:
    """The signal's handler: one sample of the frame the loop is in, in C (`_sampler.pxd`).

    It runs inside whatever code the loop was running: an error of its own
    (a task's name that fails, memory) must not surface there, so it costs
    the sample and nothing else.
    """
    try:  # noqa: SIM105 (a context manager a thousand times a second costs more)
        _c_sample(frame)  # noqa: F821 (_sampler.pxd)
    except Exception:
        pass


def stop() -> tuple[int, float]:
    """End the sampling: (ticks taken, seconds the ticks found the loop idle)."""
    _c_request_stop()  # noqa: F821 (_sampler.pxd)
    with _done:
        pass
    _c_forget()  # noqa: F821 (_sampler.pxd)
    return _c_ticks(), _c_idle_seconds()  # noqa: F821 (_sampler.pxd)


def _thread_main() -> None:
    try:
        _c_run()  # noqa: F821 (_sampler.pxd)
    finally:
        _done.release()
