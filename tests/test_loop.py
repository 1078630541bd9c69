"""EventLoop behaviour: scheduling, descriptors, waking, signals, stats, lifecycle.

The loop runs in the test's own thread wherever possible, through the
`run_loop` fixture, which arms a safety timer that stops the loop and fails
the test.  Tests whose loop waits with no timer at all (the point of the
test) are bounded by their pytest timeout instead.  The shared `loop`
fixture runs each test on every poller this OS provides: timers and wake-ups
go through each one's timeout conversion.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import pytest

from muxio.loop import EventLoop

pytestmark = pytest.mark.timeout(20)


def run_in_thread(lp: EventLoop) -> threading.Thread:
    thread = threading.Thread(target=lp.run_forever, name="loop-under-test", daemon=True)
    thread.start()
    return thread


def stop_thread(lp: EventLoop, thread: threading.Thread) -> None:
    lp.call_soon_threadsafe(lp.stop)
    thread.join(5)
    assert not thread.is_alive(), "the loop thread did not stop"


# -- scheduling ------------------------------------------------------------


def test_call_soon_runs_callbacks_in_fifo_order(loop, run_loop) -> None:
    order: list[int] = []
    for i in range(10):
        loop.call_soon(order.append, i)
    loop.call_soon(loop.stop)
    run_loop(loop)
    assert order == list(range(10))


def test_call_soon_from_a_callback_runs_in_a_later_iteration(loop, run_loop) -> None:
    seen: list[tuple[str, int]] = []

    def outer() -> None:
        seen.append(("outer", loop.stats()["iterations"]))
        loop.call_soon(inner)

    def inner() -> None:
        seen.append(("inner", loop.stats()["iterations"]))
        loop.stop()

    loop.call_soon(outer)
    run_loop(loop)
    (_, first), (_, second) = seen
    assert [name for name, _ in seen] == ["outer", "inner"]
    assert second == first + 1


def test_call_later_runs_callbacks_in_time_order(loop, run_loop) -> None:
    order: list[str] = []
    loop.call_later(0.03, order.append, "c")
    loop.call_later(0.01, order.append, "a")
    loop.call_later(0.02, order.append, "b")
    loop.call_later(0.0, order.append, "now")
    loop.call_later(0.05, loop.stop)
    run_loop(loop)
    assert order == ["now", "a", "b", "c"]


def test_timers_due_at_the_same_time_run_in_scheduling_order(loop, run_loop) -> None:
    order: list[int] = []
    when = loop.time() + 0.01
    for i in range(20):
        loop.call_at(when, order.append, i)
    loop.call_at(when, loop.stop)
    run_loop(loop)
    assert order == list(range(20))


def test_cancelled_timer_does_not_run(loop, run_loop) -> None:
    ran: list[str] = []
    doomed = loop.call_later(0.01, ran.append, "doomed")
    kept = loop.call_later(0.02, ran.append, "kept")
    doomed.cancel()
    doomed.cancel()  # twice is harmless
    assert doomed.cancelled()
    assert not kept.cancelled()
    assert "cancelled" in repr(doomed)
    loop.call_later(0.04, loop.stop)
    run_loop(loop)
    assert ran == ["kept"]


def test_cancelled_call_soon_does_not_run(loop, run_loop) -> None:
    ran: list[str] = []
    handle = loop.call_soon(ran.append, "doomed")
    loop.call_soon(ran.append, "kept")
    handle.cancel()
    loop.call_soon(loop.stop)
    run_loop(loop)
    assert ran == ["kept"]


def test_timer_cancelled_by_an_earlier_callback_does_not_run(loop, run_loop) -> None:
    ran: list[str] = []
    when = loop.time() + 0.01
    loop.call_at(when, lambda: victim.cancel())
    victim = loop.call_at(when, ran.append, "victim")
    loop.call_at(when + 0.01, loop.stop)
    run_loop(loop)
    assert ran == []


def test_call_at_runs_at_the_given_loop_time_never_early(loop, run_loop) -> None:
    when = loop.time() + 0.03
    ran_at: list[float] = []

    def cb(tag: str) -> None:
        assert tag == "tag"
        ran_at.append(loop.time())
        loop.stop()

    handle = loop.call_at(when, cb, "tag")
    assert handle.when() == when
    run_loop(loop)
    assert len(ran_at) == 1
    assert ran_at[0] >= when


def test_call_later_never_runs_early(loop, run_loop) -> None:
    start = loop.time()
    ran_at: list[float] = []
    loop.call_later(0.05, lambda: (ran_at.append(loop.time()), loop.stop()))
    run_loop(loop)
    assert ran_at[0] - start >= 0.05


def test_call_soon_threadsafe_wakes_idle_loop(loop: EventLoop) -> None:
    # No timers at all: the loop waits in the poller with no timeout, so only
    # the self-pipe can wake it (the pytest timeout is the safety net).
    started = threading.Event()
    ran_in: list[int] = []

    def poke() -> None:
        started.wait(5)
        # Give the loop time to go back into its poller; if it has not, the
        # wake-up is merely not exercised, the test cannot pass wrongly.
        threading.Event().wait(0.1)
        loop.call_soon_threadsafe(woken, "arg")

    def woken(arg: str) -> None:
        assert arg == "arg"
        ran_in.append(threading.get_ident())
        loop.stop()

    loop.call_soon(started.set)
    thread = threading.Thread(target=poke, daemon=True)
    thread.start()
    loop.run_forever()
    thread.join(5)
    assert ran_in == [threading.get_ident()]  # ran on the loop's thread
    assert loop.stats()["iterations"] <= 4


def test_call_soon_threadsafe_from_many_threads(loop) -> None:
    got: list[int] = []
    n_threads, per_thread = 4, 50
    total = n_threads * per_thread
    done = threading.Event()

    def record(i: int) -> None:
        got.append(i)
        if len(got) == total:
            done.set()

    def producer(base: int) -> None:
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, base + i)

    thread = run_in_thread(loop)
    producers = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(n_threads)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(5)
    assert done.wait(5), f"only {len(got)} of {total} callbacks ran"
    stop_thread(loop, thread)
    assert sorted(got) == sorted(k * 1000 + i for k in range(n_threads) for i in range(per_thread))
    for k in range(n_threads):  # FIFO per producing thread
        mine = [i for i in got if k * 1000 <= i < (k + 1) * 1000]
        assert mine == sorted(mine)


# -- stopping and running --------------------------------------------------


def test_stop_returns_after_the_current_iteration(loop, run_loop) -> None:
    order: list[str] = []

    def first() -> None:
        order.append("first")
        loop.stop()
        loop.call_soon(order.append, "next iteration")

    loop.call_soon(first)
    loop.call_soon(order.append, "same iteration")
    run_loop(loop)
    assert order == ["first", "same iteration"]
    assert not loop.is_running()
    # The loop can run again, and picks up what was left.
    loop.call_soon(loop.stop)
    run_loop(loop)
    assert order == ["first", "same iteration", "next iteration"]


def test_run_forever_while_running_raises(loop, run_loop) -> None:
    errors: list[BaseException] = []

    def nested() -> None:
        assert loop.is_running()
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(nested)
    run_loop(loop)
    assert len(errors) == 1
    assert "already running" in str(errors[0])


def test_close_while_running_raises(loop, run_loop) -> None:
    errors: list[BaseException] = []

    def try_close() -> None:
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(try_close)
    run_loop(loop)
    assert len(errors) == 1
    assert not loop.is_closed()


def test_exception_in_callback_is_logged_and_loop_keeps_running(
    loop, run_loop, socket_pair, caplog
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    a, b = socket_pair
    ran: list[str] = []

    def soon_fails() -> None:
        raise ValueError("boom in call_soon")

    def timer_fails() -> None:
        raise KeyError("boom in timer")

    def reader_fails() -> None:
        a.recv(100)
        raise RuntimeError("boom in reader")

    loop.call_soon(soon_fails)
    loop.call_soon(ran.append, "after call_soon")
    loop.call_later(0.01, timer_fails)
    loop.call_later(0.02, ran.append, "after timer")
    loop.add_reader(a.fileno(), reader_fails)
    b.send(b"x")
    loop.call_later(0.04, loop.stop)
    run_loop(loop)
    assert ran == ["after call_soon", "after timer"]
    failures = [r for r in caplog.records if "Exception in callback" in r.getMessage()]
    assert len(failures) == 3
    messages = " ".join(r.getMessage() for r in failures)
    for name in ("soon_fails", "timer_fails", "reader_fails"):
        assert name in messages
    assert {type(r.exc_info[1]) for r in failures if r.exc_info} == {
        ValueError,
        KeyError,
        RuntimeError,
    }


# -- descriptors -----------------------------------------------------------


def test_add_reader_calls_back_until_removed(loop: EventLoop, run_loop, socket_pair) -> None:
    a, b = socket_pair
    received: list[bytes] = []

    def on_read() -> None:
        received.append(a.recv(100))
        assert loop.remove_reader(a.fileno()) is True
        b.send(b"two")  # readable again, but nobody is listening any more
        loop.call_soon(loop.call_soon, loop.stop)  # two more polls (timeout 0)

    loop.add_reader(a.fileno(), on_read)
    b.send(b"one")
    run_loop(loop)
    assert received == [b"one"]
    assert a.recv(100) == b"two"


def test_add_reader_replaces_the_previous_callback(loop, run_loop, socket_pair) -> None:
    a, b = socket_pair
    calls: list[str] = []

    def old() -> None:
        calls.append("old")

    def new() -> None:
        calls.append("new")
        a.recv(100)
        loop.stop()

    loop.add_reader(a.fileno(), old)
    loop.add_reader(a.fileno(), new)
    b.send(b"x")
    run_loop(loop)
    assert calls == ["new"]


def test_remove_reader_and_writer_return_false_when_absent(loop, socket_pair) -> None:
    a, _b = socket_pair
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is False
    loop.add_reader(a.fileno(), lambda: None)
    assert loop.remove_writer(a.fileno()) is False  # reader only
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


def test_reader_and_writer_on_one_fd_are_independent(loop, run_loop, socket_pair) -> None:
    a, b = socket_pair
    calls: list[str] = []

    def on_write() -> None:
        calls.append("write")
        assert loop.remove_writer(a.fileno()) is True
        b.send(b"x")  # now make the reader fire

    def on_read() -> None:
        calls.append("read")
        assert a.recv(10) == b"x"
        loop.stop()

    loop.add_reader(a.fileno(), on_read)
    loop.add_writer(a.fileno(), on_write)
    run_loop(loop)
    assert calls == ["write", "read"]


def test_forget_fd_drops_reader_and_writer(loop, run_loop, socket_pair) -> None:
    a, b = socket_pair
    calls: list[str] = []
    loop.add_reader(a.fileno(), lambda: calls.append("read"))
    loop.add_writer(a.fileno(), lambda: calls.append("write"))
    loop.forget_fd(a.fileno())
    loop.forget_fd(a.fileno())  # twice is harmless
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is False
    b.send(b"x")
    loop.call_soon(loop.call_soon, loop.stop)
    run_loop(loop)
    assert calls == []
    # ...and the descriptor can be added again.
    loop.add_reader(a.fileno(), lambda: (calls.append("again"), a.recv(10), loop.stop()))
    run_loop(loop)
    assert calls == ["again"]


def test_reader_sees_peer_close_as_readable(loop, run_loop, socket_pair) -> None:
    a, b = socket_pair
    got: list[bytes] = []

    def on_read() -> None:
        got.append(a.recv(10))
        loop.remove_reader(a.fileno())
        loop.stop()

    loop.add_reader(a.fileno(), on_read)
    b.close()
    run_loop(loop)
    assert got == [b""]


# -- not spinning, compaction ----------------------------------------------


@pytest.mark.timeout(10)
def test_idle_loop_without_timers_does_not_spin(loop: EventLoop) -> None:
    started = threading.Event()
    loop.call_soon(started.set)
    thread = run_in_thread(loop)
    try:
        assert started.wait(5)
        threading.Event().wait(0.3)  # the observation window: nothing to do
        iterations = loop.stats()["iterations"]
    finally:
        stop_thread(loop, thread)
    assert iterations <= 3


def test_loop_waiting_for_a_timer_does_not_spin(loop, run_loop) -> None:
    loop.call_later(0.2, loop.stop)
    run_loop(loop)
    assert loop.stats()["iterations"] <= 3


def test_cancelled_timers_are_compacted(loop, run_loop) -> None:
    fired: list[int] = []
    # due well after the first run, which is one iteration however loaded the machine
    handles = [loop.call_later(1.0 + i * 0.0001, fired.append, i) for i in range(1000)]
    kept = [i for i in range(1000) if i % 10 == 0]
    for i, handle in enumerate(handles):
        if i % 10:
            handle.cancel()
    loop.call_soon(loop.stop)
    run_loop(loop)  # one iteration: more than half the heap is cancelled, so it is rebuilt
    # what is left: the live timers and run_loop's safety timer, cancelled after the run
    assert len(loop._timers) == len(kept) + 1
    assert sum(not entry[2].cancelled() for entry in loop._timers) == len(kept)
    loop.call_later(1.2, loop.stop)  # due after the last timer (1.0999 s)
    run_loop(loop)
    assert fired == kept  # the heap kept its order through compaction
    assert all(entry[2].cancelled() for entry in loop._timers)  # run_loop's safety timer


@pytest.mark.parametrize("live", [0, 1, 5])
def test_timers_armed_and_cancelled_behind_live_ones_do_not_pile_up(
    loop, run_loop, live: int
) -> None:
    # Each iteration arms a timeout and cancels it, as a request with a
    # deadline does; the live timers are nearer, so every cancelled one is
    # buried behind them and only a rebuild can drop it.
    for _ in range(live):
        loop.call_later(1800, lambda: None)
    sizes: list[int] = []
    n = 4000

    def step(left: int) -> None:
        loop.call_later(3600, lambda: None).cancel()
        sizes.append(len(loop._timers))
        if left:
            loop.call_soon(step, left - 1)
        else:
            loop.stop()

    loop.call_soon(step, n)
    run_loop(loop)
    # bounded: twice as many cancellations leave the heap no bigger
    assert max(sizes[n // 2 :]) <= max(sizes[: n // 2]) < n // 2
    assert sum(not entry[2].cancelled() for entry in loop._timers) == live  # none lost


def test_cancelling_timers_that_already_ran_is_harmless(loop, run_loop) -> None:
    fired: list[int] = []
    handles = [loop.call_later(0, fired.append, i) for i in range(200)]
    loop.call_soon(loop.call_soon, loop.stop)
    run_loop(loop)
    assert fired == list(range(200))
    for handle in handles:
        handle.cancel()
    loop.call_later(0.01, fired.append, "later")
    loop.call_later(0.02, loop.stop)
    run_loop(loop)
    assert fired == [*range(200), "later"]  # the live timer ran, nothing ran twice


# -- stats and slow callbacks ----------------------------------------------


def test_stats_count_iterations_events_callbacks_and_lag(run_loop, socket_pair) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:
        a, b = socket_pair
        reads: list[bytes] = []
        lp.add_reader(a.fileno(), lambda: reads.append(a.recv(100)))
        b.send(b"x")
        lp.call_soon(lambda: None)
        lp.call_later(0.01, time.sleep, 0.03)  # holds the loop for 30 ms
        lp.call_later(0.05, lp.stop)
        before = lp.stats()
        assert before == {
            "iterations": 0,
            "events": 0,
            "events_per_poll": 0.0,
            "callbacks": 0,
            "slow_iterations": 0,
            "max_lag_ms": 0.0,
            "iteration_p50_ms": 0.0,
            "iteration_p99_ms": 0.0,
            "delay_p50_ms": 0.0,
            "delay_p99_ms": 0.0,
            "delay_max_ms": 0.0,
            "utilisation": 0.0,
            "ready": 1,
            "timers": 2,
            "tasks": 0,
            "gc_pauses": 0,
            "gc_pause_ms": 0.0,
            "gc_pause_max_ms": 0.0,
        }
        run_loop(lp)
        stats = lp.stats()
        assert reads == [b"x"]
        assert stats.keys() == before.keys()
        assert stats["iterations"] >= 1
        assert stats["events"] == 1
        assert stats["events_per_poll"] == pytest.approx(
            stats["events"] / stats["iterations"], abs=1e-3
        )
        assert stats["callbacks"] == 3  # the lambda, the sleep, the stop
        assert stats["slow_iterations"] == 0  # reporting is off
        assert stats["max_lag_ms"] >= 30
    finally:
        lp.close()


def test_loop_stats_is_a_snapshot_not_a_live_view(loop, run_loop) -> None:
    taken = loop.stats()
    loop.call_soon(loop.stop)
    run_loop(loop)
    assert taken["iterations"] == 0 and taken["callbacks"] == 0
    assert loop.stats()["iterations"] >= 1
    assert loop.stats() is not loop.stats()


def slow_callback_under_test() -> None:
    time.sleep(0.15)


def test_slow_callback_sampled_by_watchdog_is_named_in_warning(run_loop, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    lp = EventLoop(slow_callback_ms=50)  # starts its watchdog on the first run
    try:
        lp.call_soon(slow_callback_under_test)
        lp.call_later(0.2, lp.stop)
        run_loop(lp)
    finally:
        lp.close()
    # Exactly one slow iteration unless the machine itself stalled the loop.
    assert lp.stats()["slow_iterations"] >= 1
    assert lp.stats()["max_lag_ms"] >= 150
    slow = [r for r in caplog.records if "slow callback" in r.getMessage()]
    assert len(slow) == lp.stats()["slow_iterations"]
    assert all(r.levelno == logging.WARNING for r in slow)
    assert any("slow_callback_under_test" in r.getMessage() for r in slow)


def test_slow_callback_in_c_code_is_named_by_the_watchdog(run_loop, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    lp = EventLoop(slow_callback_ms=50)
    try:
        lp.call_soon(time.sleep, 0.3)
        lp.call_later(0.35, lp.stop)
        run_loop(lp)
    finally:
        lp.close()
    assert lp.stats()["slow_iterations"] >= 1
    slow = [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]
    assert len(slow) == lp.stats()["slow_iterations"]
    assert any("callback sleep (not Python code)" in message for message in slow), slow


# -- signals ---------------------------------------------------------------


def _frames() -> list[str]:
    frame = sys._getframe(1)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


@pytest.mark.timeout(10)
def test_signal_handler_runs_on_the_loop_not_in_the_signal_handler(loop, run_loop) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    old_handler = signal.getsignal(signal.SIGUSR1)
    old_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_wakeup)
    calls: list[tuple[str, list[str], object]] = []

    def on_usr1(arg: str) -> None:
        calls.append((arg, _frames(), loop._running.now))
        loop.stop()

    def send_signal() -> None:
        threading.Event().wait(0.05)  # let the loop settle in its poller
        os.kill(os.getpid(), signal.SIGUSR1)

    sender = threading.Thread(target=send_signal, daemon=True)
    try:
        loop.add_signal_handler(signal.SIGUSR1, on_usr1, "usr1")
        assert signal.getsignal(signal.SIGUSR1) not in (old_handler, signal.SIG_DFL)
        loop.call_soon(sender.start)
        run_loop(loop)
        sender.join(5)
        assert len(calls) == 1
        arg, frames, running = calls[0]
        assert arg == "usr1"
        # the iteration's own record (a compiled loop has no Python frames to show it)
        assert getattr(running, "_callback", None) is on_usr1
        assert "_noop_signal_handler" not in frames
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
        current = signal.set_wakeup_fd(old_wakeup)
        assert current == old_wakeup  # the loop gave the wakeup fd back
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, old_handler)
        signal.set_wakeup_fd(old_wakeup)


def test_add_signal_handler_from_non_main_thread_raises(loop) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(5)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert "main thread" in str(errors[0])
    assert signal.getsignal(signal.SIGUSR1) == before


def test_close_removes_signal_handlers(loop) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    old_handler = signal.getsignal(signal.SIGUSR2)
    old_wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_wakeup)
    try:
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        loop.close()
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
        assert signal.set_wakeup_fd(old_wakeup) == old_wakeup
    finally:
        signal.signal(signal.SIGUSR2, old_handler)
        signal.set_wakeup_fd(old_wakeup)


# -- lifecycle -------------------------------------------------------------


def test_close_closes_the_poller_and_refuses_run_forever(loop: EventLoop) -> None:
    kernel_fd = loop.poller.fileno()
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_forever()
    if kernel_fd != -1:
        with pytest.raises(OSError):
            os.fstat(kernel_fd)
    # As in asyncio, scheduling on a closed loop is an error, from any thread.
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon_threadsafe(lambda: None)


def test_due_timer_runs_once_when_an_io_callback_compacts_the_heap(
    loop, run_loop, socket_pair
) -> None:
    # Cancelling many timers from an I/O callback compacts the heap in the
    # middle of an iteration, before that iteration collects its due timers.
    a, b = socket_pair
    fired: list[str] = []
    far = [loop.call_later(60, fired.append, "far") for _ in range(100)]
    loop.call_later(0, fired.append, "due")  # due in the same iteration as the I/O

    def on_read() -> None:
        a.recv(10)
        loop.remove_reader(a.fileno())
        for handle in far:
            handle.cancel()

    loop.add_reader(a.fileno(), on_read)
    b.send(b"x")
    loop.call_later(0.05, loop.stop)
    run_loop(loop)
    assert fired == ["due"]
    assert all(entry[2].cancelled() for entry in loop._timers)


@pytest.mark.timeout(10)
def test_timer_far_in_the_future_does_not_break_the_wait(loop, socket_pair) -> None:
    # poll(2) and epoll_wait(2) take an int of milliseconds (about 24.8 days).
    a, b = socket_pair
    far = loop.call_later(30 * 86400, lambda: None)
    loop.call_later(float("inf"), lambda: None)
    got: list[bytes] = []

    def on_read() -> None:
        got.append(a.recv(10))
        loop.stop()

    loop.add_reader(a.fileno(), on_read)
    b.send(b"x")  # the only thing that can end the wait: no nearer timer
    loop.run_forever()
    assert got == [b"x"]
    assert not far.cancelled()
