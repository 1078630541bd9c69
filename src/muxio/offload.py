"""Run blocking or CPU-heavy functions off the loop and get the result back on it.

A callback that computes for 300 ms stops every connection for 300 ms: the
loop has one thread.  An `Offloader` hands such a function to a thread pool
or a process pool and, when it finishes, schedules the caller's callback on
the loop with `call_soon_threadsafe`, so protocol code never runs on a
worker thread and needs no locks::

    offloader = Offloader("processes", max_workers=4)
    offloader.start(loop)                      # pre-warms the pool
    offloader.submit(checksum, data, callback=on_checksum)
    ...
    offloader.close()                          # when the loop has stopped

`callback` receives an `Outcome`: `outcome.error` is the worker's exception
(or None) and `outcome.result()` returns the value or raises that exception.

Mode ``"none"`` runs the function inline, on the loop, and exists to show
what offloading saves: the loop's slow-callback warning names the culprit.

Processes start with ``forkserver`` on Linux and ``spawn`` elsewhere, never
``fork``: the loop runs beside a watchdog thread and the executors' own
threads, and forking a multi-threaded process can copy a lock some other
thread was holding.  Both methods cost a fresh interpreter start per
worker (forkserver pays most of it once), so `start()` pre-warms the pool
before the server accepts its first connection.

A worker process that dies (a segfault, `os._exit`, the OOM killer) breaks
a `ProcessPoolExecutor` for good: every job running on it fails with
`BrokenProcessPool`.  The offloader reports that error to each of those
callers and replaces the pool; jobs still in its own queue, and later
submits, go to the fresh pool.

Jobs wait in the offloader's own queue and enter the pool only when a
worker is free, so a job cancelled before it started (its client left)
never runs.  The queue is fair across callers: `submit(..., key=...)` names
who the job is for (a connection, say), each key has its own first-in
first-out queue, and a free worker takes the next job of the key served
least so far, in turn among equals.  A key that arrives (or comes back
after a whole round away) joins at the head of the current round, so a
newcomer waits for one job to finish, not for every queued job of every
busy caller before it; jobs without a key share one queue.

A cancelled job that is already running is abandoned where the pool
allows it: a process pool whose running jobs have all been abandoned is
terminated and replaced (`ProcessPoolExecutor` cannot stop one worker
without breaking the jobs of the others, so a job of a live caller is
never sacrificed); a thread cannot be stopped, so an abandoned job in a
thread runs to its end and only its result is dropped.

`OrderedReplies` keeps a connection's replies in request order while the
results that feed them complete in any order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from heapq import heappop, heappush
from typing import Any, Generic, Literal, TypeVar

from .errors import RuntimeFailure
from .loop import EventLoop

log = logging.getLogger("muxio")

T = TypeVar("T")
Mode = Literal["none", "threads", "processes"]
MODES: tuple[Mode, ...] = ("none", "threads", "processes")

__all__ = [
    "MODES",
    "BrokenProcessPool",
    "Job",
    "Mode",
    "Offloader",
    "OrderedReplies",
    "Outcome",
    "ReplySlot",
    "default_start_method",
]


def default_start_method() -> str:
    """``forkserver`` on Linux, ``spawn`` elsewhere: never ``fork`` beside threads."""
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


class Outcome(Generic[T]):
    """How an offloaded call ended: a value, or the exception it raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Outcome(error={self.error!r})"
        return f"Outcome(value={self.value!r})"

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> T:
        """The value, or raise the worker's exception here, on the loop."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class OffloadCounters:
    __slots__ = ("abandoned", "cancelled", "completed", "failed", "pools_replaced", "submitted")

    def __init__(self) -> None:
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.abandoned = 0
        self.pools_replaced = 0


class Job:
    """One submitted call; `cancel()` drops its callback (and the call, if queued)."""

    __slots__ = ("_call", "_cancelled", "_executor", "_future", "_key", "_offloader", "callback")

    def __init__(
        self,
        callback: Callable[[Outcome[Any]], object],
        offloader: Offloader | None = None,
        call: tuple[Callable[..., Any], tuple[Any, ...]] | None = None,
    ) -> None:
        self.callback = callback
        self._cancelled = False
        self._future: concurrent.futures.Future[Any] | None = None
        self._executor: concurrent.futures.Executor | None = None
        self._offloader = offloader
        self._call = call
        self._key: Hashable = None

    def cancel(self) -> None:
        """The callback will not run; a call not yet started will not run either.

        A call already running in a process pool is abandoned when every
        running call has been (see the module docstring).
        """
        if self._cancelled:
            return
        self._cancelled = True
        self._call = None
        if self._future is not None:
            self._future.cancel()
        if self._offloader is not None:
            self._offloader._job_cancelled(self)

    def cancelled(self) -> bool:
        return self._cancelled


class _Flow:
    """One key's queue and its place in the rotation."""

    __slots__ = ("jobs", "last", "queued", "running", "served")

    def __init__(self, served: int) -> None:
        self.jobs: deque[Job] = deque()
        self.served = served
        """Jobs handed to the pool, counted from the round the key joined in."""
        self.last = -1
        """When its last job was handed over (-1: never): the tie-break, oldest first."""
        self.running = 0
        self.queued = False
        """Whether it has an entry in the offloader's heap."""


def _worker_init(modules: tuple[str, ...]) -> None:
    """In each worker process: leave Ctrl-C to the server, die with it, import.

    A terminal's SIGINT reaches the whole process group.  The server answers
    it with a graceful shutdown that waits for running jobs, so a worker must
    not die of it (that would break the pool mid-drain).

    A server that is killed outright (SIGKILL, the OOM killer) cannot shut
    its pool down, and an idle worker would wait on the job queue forever:
    it holds that queue's write end itself, so it never sees EOF.  A watcher
    thread waits on the parent's sentinel instead and ends the worker.
    """
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(
            target=_exit_with_parent, args=(parent,), name="muxio-parent-watch", daemon=True
        ).start()
    for name in modules:
        importlib.import_module(name)


def _exit_with_parent(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns once the parent's end of the sentinel pipe is closed
    os._exit(1)


def _warm(delay: float) -> int:
    """A no-op job that lasts long enough for every warm-up job to get its own worker."""
    time.sleep(delay)
    return os.getpid()


class Offloader:
    """Runs functions in a thread or process pool; results come back on the loop.

    Everything but the workers themselves belongs to the loop's thread:
    call `start`, `submit` and `close` from there (or before the loop runs).
    """

    warm_timeout = 30.0
    """How long `start()` may wait for the process pool's first workers."""

    def __init__(
        self,
        mode: Mode = "threads",
        *,
        max_workers: int | None = None,
        start_method: str | None = None,
        preload: Iterable[str] = (),
        loop: EventLoop | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown offload mode {mode!r} (choose one of: {', '.join(MODES)})")
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.mode: Mode = mode
        self.max_workers = max_workers
        self.start_method = start_method or default_start_method()
        self.preload = tuple(preload)
        self.loop = loop
        self._counters = OffloadCounters()
        self._executor: concurrent.futures.Executor | None = None
        self._pending: set[Job] = set()
        self._flows: dict[Hashable, _Flow] = {}
        self._turns: list[tuple[int, int, int, Hashable]] = []
        """(served, last, arrival, key) per key with queued jobs: the next turn on top."""
        self._round = 0
        """`served` of the last key that got a worker: where a newcomer joins."""
        self._handed = 0
        self._arrivals = 0
        self._retired: list[concurrent.futures.Executor] = []
        self._running: set[Job] = set()
        self._started = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    @property
    def workers(self) -> int:
        """The pool's size (0 for ``none``)."""
        if self.mode == "none":
            return 0
        if self.max_workers is not None:
            return self.max_workers
        if self.mode == "processes":
            return os.cpu_count() or 1
        return min(32, (os.cpu_count() or 1) + 4)

    def stats(self) -> dict[str, int]:
        """A snapshot of the jobs, as `EventLoop.stats()` and `Server.stats()`.

        ``submitted``; of those ``completed`` (a value), ``failed`` (an
        exception, a dead worker's included), ``cancelled`` (before their
        callback ran), ``pending`` (callback still to come); ``abandoned``:
        cancelled while running and given up on; ``pools_replaced``: pools
        stopped or broken and started afresh.  A new dict each call.
        """
        c = self._counters
        return {
            "submitted": c.submitted,
            "completed": c.completed,
            "failed": c.failed,
            "cancelled": c.cancelled,
            "pending": len(self._pending),
            "abandoned": c.abandoned,
            "pools_replaced": c.pools_replaced,
        }

    @property
    def queued(self) -> int:
        """Jobs waiting for a free worker."""
        return sum(1 for f in self._flows.values() for job in f.jobs if not job._cancelled)

    @property
    def running(self) -> int:
        """Jobs handed to the pool (abandoned ones included) and not yet finished."""
        return len(self._running)

    def start(self, loop: EventLoop | None = None) -> None:
        """Bind to `loop` and create the pool; a process pool is pre-warmed.

        Blocks (for up to `warm_timeout` seconds) until every worker process
        has started and imported `preload`, so call it before the loop runs:
        the first request then finds the pool ready.
        """
        if self._closed:
            raise RuntimeError("the offloader is closed")
        if loop is not None:
            self.loop = loop
        if self.loop is None:
            raise RuntimeError("Offloader.start() needs the loop that receives the results")
        if self._started:
            return
        self._started = True
        if self.mode == "none":
            return
        began = time.monotonic()
        self._executor = self._new_executor()
        if self.mode == "threads":
            log.info("offload: a pool of %d worker threads", self.workers)
            return
        try:
            pids = self._warm_up(self._executor, wait=True)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._started = False
            raise
        log.info(
            "offload: %d worker processes ready (%s) in %.0f ms, pids %s",
            self.workers,
            self.start_method,
            (time.monotonic() - began) * 1000,
            " ".join(map(str, sorted(pids))),
        )

    def _new_executor(self) -> concurrent.futures.Executor:
        if self.mode == "threads":
            return concurrent.futures.ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="muxio-offload"
            )
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context(self.start_method),
            initializer=_worker_init,
            initargs=(self.preload,),
        )

    def _warm_up(self, executor: concurrent.futures.Executor, *, wait: bool) -> set[int]:
        """Start every worker now rather than on the first requests; their pids.

        The pool spawns a worker per submit while none is idle, so one short
        job per worker, submitted together, starts them all.  A worker that
        came up first may take two of them, so with `wait` rounds repeat
        until every worker has answered: only then has each one imported
        what the jobs need.
        """
        n = self.workers
        if not wait:
            for _ in range(n):
                executor.submit(_warm, 0.05)
            return set()
        deadline = time.monotonic() + self.warm_timeout
        pids: set[int] = set()
        while len(pids) < n:
            futures = [executor.submit(_warm, 0.05) for _ in range(n)]
            remaining = max(0.0, deadline - time.monotonic())
            done, not_done = concurrent.futures.wait(futures, timeout=remaining)
            if not_done:
                raise RuntimeFailure(
                    f"offload: the process pool did not start within {self.warm_timeout:.0f} s"
                )
            for future in done:
                exc = future.exception()
                if exc is not None:
                    raise RuntimeFailure(
                        f"offload: the process pool failed to start: {exc}"
                    ) from exc
                pids.add(future.result())
        return pids

    def close(self, timeout: float = 2.0) -> None:
        """Shut the pool down: queued jobs are cancelled, running ones get `timeout`.

        Callbacks do not run after `close()`: the loop is stopping.  Worker
        processes still busy after `timeout` are terminated; worker threads
        cannot be, and are left to finish.
        """
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, set()
        self._counters.cancelled += len(pending)
        running, self._running = self._running, set()
        self._flows.clear()
        self._turns.clear()
        retired, self._retired = self._retired, []
        for old in retired:
            old.shutdown(wait=True)  # stopped or broken pools: only their threads are left
        executor, self._executor = self._executor, None
        if executor is None:
            return
        futures = [job._future for job in pending | running if job._future is not None]
        # Taken before shutdown(): the executor's manager thread may clear it meanwhile.
        workers = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        _, busy = concurrent.futures.wait(futures, timeout=timeout)
        if busy:
            if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
                log.warning("offload: terminating workers: %d jobs still busy", len(busy))
                for process in workers:
                    with contextlib.suppress(Exception):
                        process.terminate()
            else:
                log.warning(
                    "offload: %d jobs still running in threads; not waiting for them",
                    len(busy),
                )
                return
        executor.shutdown(wait=True)
        for process in workers:
            # shutdown() may return before its manager thread has reaped an idle worker
            process.join(timeout)
            if process.exitcode is None:
                with contextlib.suppress(Exception):
                    process.terminate()
                process.join(1.0)
        s = self._counters
        log.info(
            "offload: pool closed (mode %s: %d jobs, %d failed, %d cancelled, %d pools replaced)",
            self.mode,
            s.submitted,
            s.failed,
            s.cancelled,
            s.pools_replaced,
        )

    def is_closed(self) -> bool:
        return self._closed

    # -- submitting ----------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., T],
        *args: Any,
        callback: Callable[[Outcome[T]], object],
        key: Hashable = None,
    ) -> Job:
        """Run `fn(*args)` off the loop; then, on the loop, `callback(outcome)`.

        `key` says whom the job is for: workers are shared fairly among
        keys (see the module docstring), so give one per client.  The
        callback never runs inside `submit` itself, in any mode.  For a
        process pool `fn`, its arguments and its result must pickle (a
        module-level function, say); a pickling error comes back as the
        outcome's error like any other.
        """
        if self._closed:
            raise RuntimeError("the offloader is closed")
        if not self._started:
            self.start()
        loop = self.loop
        assert loop is not None
        self._counters.submitted += 1
        if self.mode == "none":
            job = Job(callback, self)
            self._pending.add(job)
            try:
                outcome: Outcome[T] = Outcome(value=fn(*args))
            except Exception as exc:
                outcome = Outcome(error=exc)
            loop.call_soon(self._deliver, job, outcome)
            return job
        job = Job(callback, self, (fn, args))
        job._key = key
        self._pending.add(job)
        self._enqueue(job, key)
        self._dispatch()
        return job

    def _enqueue(self, job: Job, key: Hashable) -> None:
        flows = self._flows
        if len(flows) > 64 and len(flows) > 4 * len(self._turns) + 4 * len(self._running):
            self._forget_idle(key)
        flow = flows.get(key)
        if flow is None:
            flow = flows[key] = _Flow(self._round)
        flow.jobs.append(job)
        if not flow.queued:
            self._take_turn(flow, key)

    def _take_turn(self, flow: _Flow, key: Hashable) -> None:
        flow.served = max(flow.served, self._round)
        flow.queued = True
        self._arrivals += 1
        heappush(self._turns, (flow.served, flow.last, self._arrivals, key))

    def _forget_idle(self, keep: Hashable) -> None:
        """Drop keys with nothing queued or running that would rejoin as newcomers anyway.

        A key one job ahead of the round is kept only while it may be
        between a finished job and the next (its callback submits it).
        """
        limit = self._round + 1
        for key in [
            k
            for k, f in self._flows.items()
            if not f.jobs and not f.running and f.served <= limit and k != keep
        ]:
            del self._flows[key]

    def _next_job(self) -> Job | None:
        """The next job by turn, or None when nothing is queued."""
        turns = self._turns
        while turns:
            _, _, _, key = heappop(turns)
            flow = self._flows[key]
            flow.queued = False
            jobs = flow.jobs
            while jobs and (jobs[0]._cancelled or jobs[0]._call is None):
                jobs.popleft()
            if not jobs:
                if not flow.running:
                    del self._flows[key]
                continue
            job = jobs.popleft()
            self._round = max(self._round, flow.served)
            flow.served += 1
            self._handed += 1
            flow.last = self._handed
            flow.running += 1
            if jobs:
                self._take_turn(flow, key)
            return job
        return None

    def _finished(self, job: Job) -> None:
        """`job` left the pool (done, or abandoned)."""
        if job not in self._running:
            return
        self._running.discard(job)
        flow = self._flows.get(job._key)
        if flow is not None:
            flow.running -= 1

    def _dispatch(self) -> None:
        """Hand queued jobs to the pool, by turn, while it has a free worker."""
        while len(self._running) < self.workers and not self._closed:
            job = self._next_job()
            if job is None:
                break
            call = job._call
            assert call is not None
            job._call = None
            fn, args = call
            executor = self._executor
            if executor is None:
                executor = self._executor = self._new_executor()
            try:
                future = executor.submit(fn, *args)
            except BrokenProcessPool:
                # broken since the last delivery: replace it now and try once more
                fresh = self._replace_pool(executor, "a broken pool refused a job")
                assert fresh is not None
                executor = fresh
                future = executor.submit(fn, *args)
            job._future = future
            job._executor = executor
            self._running.add(job)
            future.add_done_callback(partial(self._done_in_worker, job))

    def _job_cancelled(self, job: Job) -> None:
        """A caller gave up on `job`: forget it, and stop its worker if that is free."""
        if job not in self._pending:
            return
        self._pending.discard(job)
        self._counters.cancelled += 1
        if job in self._running and self._stop_abandoned():
            self._dispatch()

    def _stop_abandoned(self) -> bool:
        """Stop a process pool whose running jobs nobody waits for any more.

        While one of them is a live caller's, the abandoned ones run on:
        stopping their workers would break the pool under the live job too.
        """
        running = self._running
        executor = self._executor
        if self.mode != "processes" or executor is None or not running:
            return False
        if any(not job._cancelled or job._executor is not executor for job in running):
            return False
        self._counters.abandoned += len(running)
        for job in list(running):
            self._finished(job)
        self._replace_pool(executor, "every running job was abandoned", terminate=True)
        return True

    def _done_in_worker(self, job: Job, future: concurrent.futures.Future[Any]) -> None:
        """Runs in a pool thread (or the pool's manager thread): hand over to the loop."""
        if self._closed:
            return
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if future.cancelled():
            outcome: Outcome[Any] = Outcome(error=concurrent.futures.CancelledError())
        else:
            exc = future.exception()
            outcome = Outcome(error=exc) if exc is not None else Outcome(value=future.result())
        loop.call_soon_threadsafe(self._deliver, job, outcome)

    def _deliver(self, job: Job, outcome: Outcome[Any]) -> None:
        """On the loop: account, replace a broken pool, run the caller's callback."""
        if self._closed:
            return
        self._finished(job)
        if isinstance(outcome.error, BrokenProcessPool) and job._executor is self._executor:
            assert job._executor is not None
            self._replace_pool(job._executor, "a worker process died")
        self._dispatch()
        if self._stop_abandoned():
            self._dispatch()
        if job._cancelled or job not in self._pending:
            return
        self._pending.discard(job)
        if outcome.error is None:
            self._counters.completed += 1
        else:
            self._counters.failed += 1
        try:
            job.callback(outcome)
        except Exception:
            log.exception("exception in offload callback %r", job.callback)

    def _replace_pool(
        self, broken: concurrent.futures.Executor, why: str, *, terminate: bool = False
    ) -> concurrent.futures.Executor | None:
        """Swap in a fresh pool once per broken one; jobs on the old one have failed.

        With `terminate` the old pool still works but runs only abandoned
        jobs: its workers are stopped rather than left to finish them.
        """
        if self._executor is not broken:
            return self._executor
        self._counters.pools_replaced += 1
        if terminate:
            log.info("offload: %s; stopping the pool of %d workers", why, self.workers)
            workers = list((getattr(broken, "_processes", None) or {}).values())
            broken.shutdown(wait=False, cancel_futures=True)
            for process in workers:
                with contextlib.suppress(Exception):
                    process.terminate()
            self._retired.append(broken)
            self._executor = None  # the next job starts a fresh pool; a closing server never does
            return None
        else:
            log.warning(
                "offload: %s; its pending jobs failed with BrokenProcessPool; "
                "starting a fresh pool of %d workers",
                why,
                self.workers,
            )
            broken.shutdown(wait=False, cancel_futures=True)
            self._retired.append(broken)
        fresh = self._new_executor()
        self._executor = fresh
        # start the workers now, without waiting on the loop for them
        self._warm_up(fresh, wait=False)
        return fresh


class ReplySlot:
    """A reserved place in a connection's reply order; `fill()` it once."""

    __slots__ = ("_owner", "data")

    def __init__(self, owner: OrderedReplies, data: bytes | None = None) -> None:
        self._owner = owner
        self.data = data

    def fill(self, data: bytes) -> None:
        if self.data is not None:
            raise RuntimeError("reply slot filled twice")
        self.data = data
        self._owner.queued_bytes += len(data)
        self._owner._flush()


class OrderedReplies:
    """Writes one connection's replies in request order.

    Each request either `reply()`s at once or `reserve()`s a slot to fill
    when its result arrives; a reply waits until every earlier one has been
    written, so pipelined requests are answered in the order they came.
    """

    __slots__ = ("_queue", "_write", "on_written", "queued_bytes")

    def __init__(
        self,
        write: Callable[[bytes], object],
        on_written: Callable[[], object] | None = None,
    ) -> None:
        self._write = write
        self._queue: deque[ReplySlot] = deque()
        self.on_written = on_written
        """Called after a filled slot let replies be written (a chance to resume)."""
        self.queued_bytes = 0
        """Bytes of replies ready but waiting behind an earlier, unfinished one."""

    def __len__(self) -> int:
        """Replies promised but not yet written."""
        return len(self._queue)

    def reply(self, data: bytes) -> None:
        """Answer now, or as soon as the earlier replies are written."""
        if self._queue:
            self._queue.append(ReplySlot(self, data))
            self.queued_bytes += len(data)
        else:
            self._write(data)

    def reserve(self) -> ReplySlot:
        slot = ReplySlot(self)
        self._queue.append(slot)
        return slot

    def clear(self) -> None:
        """Forget every pending reply (the connection is gone)."""
        self._queue.clear()
        self.queued_bytes = 0

    def _flush(self) -> None:
        queue = self._queue
        wrote = False
        while queue and queue[0].data is not None:
            data = queue.popleft().data
            assert data is not None
            self.queued_bytes -= len(data)
            self._write(data)
            wrote = True
        if wrote and self.on_written is not None:
            self.on_written()
