"""Offloader: results and exceptions come back on the loop thread, in order.

Each test runs a real EventLoop in the test thread with a real thread or
process pool; the loop is stopped by the last expected callback and guarded
by `run_loop`'s safety timer, and every pool is closed in a `finally`.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import BEST_POLLER, RunLoop

from muxio import EventLoop
from muxio.offload import BrokenProcessPool, Offloader, OrderedReplies, Outcome, ReplySlot

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def poller() -> str:
    """The best poller only: how results reach the loop is tested per poller in test_loop."""
    return BEST_POLLER

MODES = ["none", "threads", "processes"]


# -- functions the workers run (module level, so they pickle) ------------------


def where() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


def fail(message: str) -> None:
    raise ValueError(message)


def crash(code: int) -> None:
    os._exit(code)


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def wait_for_gate(gate: threading.Event, value: int) -> int:
    if not gate.wait(10):
        raise TimeoutError("gate never opened")
    return value


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def make_offloader(loop: EventLoop) -> Iterator[Callable[..., Offloader]]:
    """`make_offloader(mode, **kw)`: a started Offloader on `loop`, closed after the test."""
    made: list[Offloader] = []

    def make(mode: Any, **kwargs: Any) -> Offloader:
        off = Offloader(mode, **kwargs)
        made.append(off)
        off.start(loop)
        return off

    try:
        yield make
    finally:
        for off in made:
            off.close(timeout=5)


class Collector:
    """Callbacks record (thread id, outcome) and stop the loop after `expected`."""

    def __init__(self, loop: EventLoop, expected: int) -> None:
        self.loop = loop
        self.expected = expected
        self.calls: list[tuple[str, int, Outcome[Any]]] = []

    def __call__(self, tag: str) -> Callable[[Outcome[Any]], None]:
        def callback(outcome: Outcome[Any]) -> None:
            self.calls.append((tag, threading.get_ident(), outcome))
            if len(self.calls) >= self.expected:
                self.loop.stop()

        return callback

    def by_tag(self) -> dict[str, Outcome[Any]]:
        return {tag: outcome for tag, _, outcome in self.calls}


# -- results and exceptions ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_result_and_exception_come_back_on_the_loop_thread(
    mode: str, loop: EventLoop, run_loop: RunLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader(mode, max_workers=2)
    got = Collector(loop, 2)
    off.submit(where, callback=got("where"))
    off.submit(fail, "boom", callback=got("fail"))
    assert got.calls == [], "a callback ran inside submit()"
    assert off.stats()["pending"] == 2
    run_loop(loop, 10)

    loop_thread = threading.get_ident()
    assert {ident for _, ident, _ in got.calls} == {loop_thread}
    outcomes = got.by_tag()
    pid, worker_thread = outcomes["where"].result()
    if mode == "processes":
        assert pid != os.getpid()
    elif mode == "threads":
        assert (pid, worker_thread != loop_thread) == (os.getpid(), True)
    else:
        assert (pid, worker_thread) == (os.getpid(), loop_thread)

    failed = outcomes["fail"]
    assert not failed.ok
    assert isinstance(failed.error, ValueError) and str(failed.error) == "boom"
    with pytest.raises(ValueError, match="boom"):
        failed.result()
    stats = off.stats()
    assert (stats["submitted"], stats["completed"], stats["failed"], stats["pending"]) == (
        2, 1, 1, 0
    )


def test_unpicklable_call_fails_like_any_other(
    loop: EventLoop, run_loop: RunLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader("processes", max_workers=1)
    got = Collector(loop, 2)
    off.submit(lambda: 1, callback=got("lambda"))
    off.submit(where, callback=got("after"))
    run_loop(loop, 10)
    outcomes = got.by_tag()
    assert isinstance(outcomes["lambda"].error, (pickle.PicklingError, AttributeError, TypeError))
    assert outcomes["after"].ok


# -- ordering ------------------------------------------------------------------


def test_replies_keep_request_order_when_results_complete_out_of_order(
    loop: EventLoop, run_loop: RunLoop, make_offloader: Callable[..., Offloader]
) -> None:
    """Job 3 finishes first, then 2, 1, 0; the connection still sees 0, 1, 2, 3.

    Each job waits on its own gate, and each completion (on the loop)
    opens the previous job's gate, so the order is forced, not timed.
    """
    off = make_offloader("threads", max_workers=4)
    written: list[bytes] = []
    replies = OrderedReplies(written.append)
    completed: list[int] = []
    gates = [threading.Event() for _ in range(4)]

    def done(slot: Any, i: int) -> Callable[[Outcome[int]], None]:
        def callback(outcome: Outcome[int]) -> None:
            completed.append(outcome.result())
            slot.fill(f"{i}\n".encode())
            if i > 0:
                gates[i - 1].set()
            else:
                loop.stop()

        return callback

    replies.reply(b"first\n")  # nothing pending: written at once
    assert written == [b"first\n"]
    for i in range(4):
        slot = replies.reserve()
        off.submit(wait_for_gate, gates[i], i, callback=done(slot, i))
    replies.reply(b"last\n")  # waits behind the four pending replies
    assert len(replies) == 5
    gates[3].set()
    try:
        run_loop(loop, 10)
    finally:
        for gate in gates:
            gate.set()

    assert completed == [3, 2, 1, 0]
    assert written == [b"first\n", b"0\n", b"1\n", b"2\n", b"3\n", b"last\n"]
    assert len(replies) == 0


def test_process_results_keep_request_order(
    loop: EventLoop, run_loop: RunLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader("processes", max_workers=2)
    written: list[bytes] = []

    def on_written() -> None:
        if len(written) == 3:
            loop.stop()

    def fill(slot: ReplySlot) -> Callable[[Outcome[int]], None]:
        return lambda outcome: slot.fill(b"%d" % outcome.result())

    replies = OrderedReplies(written.append, on_written)
    for i, delay in enumerate((0.3, 0.0, 0.1)):
        off.submit(sleep_then, delay, i, callback=fill(replies.reserve()))
    run_loop(loop, 10)
    assert written == [b"0", b"1", b"2"]


# -- a crashed worker process ------------------------------------------------------


def test_crashed_worker_is_replaced(
    loop: EventLoop, run_loop: RunLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader("processes", max_workers=1)
    outcomes: dict[str, Outcome[Any]] = {}

    def after_crash(outcome: Outcome[Any]) -> None:
        outcomes["crash"] = outcome
        off.submit(where, callback=after_replacement)

    def after_replacement(outcome: Outcome[Any]) -> None:
        outcomes["next"] = outcome
        loop.stop()

    off.submit(crash, 3, callback=after_crash)
    # queued behind the crash: it waits in the offloader, never enters the broken pool
    off.submit(where, callback=lambda o: outcomes.setdefault("queued", o))
    run_loop(loop, 20)

    assert isinstance(outcomes["crash"].error, BrokenProcessPool)
    assert outcomes["queued"].ok
    assert outcomes["next"].ok
    assert outcomes["next"].result()[0] != os.getpid()
    assert off.stats()["pools_replaced"] == 1
    assert off.stats()["pending"] == 0


# -- cancelling and shutting down --------------------------------------------------


def test_cancelled_job_never_calls_back(
    loop: EventLoop, run_loop: RunLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader("threads", max_workers=1)
    gate = threading.Event()
    calls: list[str] = []
    running = off.submit(wait_for_gate, gate, 1, callback=lambda o: calls.append("running"))
    queued = off.submit(where, callback=lambda o: calls.append("queued"))
    # one worker: this one's delivery comes after the two above
    off.submit(where, callback=lambda o: loop.stop())
    running.cancel()  # already started: it runs to the end, but nobody hears of it
    queued.cancel()  # not started: it never runs
    gate.set()
    run_loop(loop, 10)
    assert calls == []
    assert off.stats()["pending"] == 0
    assert off.stats()["cancelled"] == 2


def test_close_shuts_down_processes_and_drops_pending_callbacks(
    loop: EventLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader("processes", max_workers=2)
    executor = off._executor
    processes = list(getattr(executor, "_processes", {}).values())
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    calls: list[Outcome[Any]] = []
    # running: terminated (close() returning at all, within the test's timeout, says so)
    off.submit(sleep_then, 3600, 1, callback=calls.append)
    for _ in range(4):
        off.submit(where, callback=calls.append)  # queued: cancelled
    off.close(timeout=0.5)
    assert all(p.exitcode is not None for p in processes)
    assert off.is_closed() and off.stats()["pending"] == 0
    with pytest.raises(RuntimeError, match="closed"):
        off.submit(where, callback=calls.append)
    loop.call_later(0.05, loop.stop)  # anything already on its way is dropped
    loop.run_forever()
    assert calls == []


def test_close_threads_cancels_queued_jobs(
    loop: EventLoop, make_offloader: Callable[..., Offloader]
) -> None:
    off = make_offloader("threads", max_workers=1)
    gate = threading.Event()
    ran: list[int] = []

    def record(value: int) -> int:
        ran.append(value)
        return value

    off.submit(wait_for_gate, gate, 0, callback=lambda o: None)
    for i in range(5):
        off.submit(record, i, callback=lambda o: None)
    try:
        # the running job is stuck behind its gate: close() gives up on it after
        # the timeout (a thread cannot be killed) but cancels the queued ones first
        off.close(timeout=0.2)
    finally:
        gate.set()
    assert ran == []
    assert off.is_closed() and off.stats()["pending"] == 0


def test_stats_is_a_snapshot_with_the_documented_keys() -> None:
    off = Offloader("none")
    loop = EventLoop()
    try:
        off.start(loop)
        taken = off.stats()
        done: list[Outcome[int]] = []
        off.submit(abs, -3, callback=done.append)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert done and done[0].result() == 3
        assert taken == {
            "submitted": 0, "completed": 0, "failed": 0, "cancelled": 0,
            "pending": 0, "abandoned": 0, "pools_replaced": 0,
        }
        assert off.stats()["submitted"] == off.stats()["completed"] == 1
        assert off.stats() is not off.stats()
    finally:
        off.close()
        loop.close()
