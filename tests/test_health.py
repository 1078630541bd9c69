"""The loop's always-on health: histograms, utilisation, GC pauses, slow sites, monitor().

Each test makes the loop do something for real (block it with `time.sleep`,
collect a large heap, fire a timer late, spin it) and checks the numbers
say so.  Nothing asserts a duration the machine chooses: a blocked loop is
blocked for at least as long as it slept, and utilisation is compared
between two loops, not against a threshold.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator

import pytest
from conftest import RunLoop
from helpers import MUXIO_PATH, round_trip, serve_process

import muxio
from muxio import histogram
from muxio.loop import GC_SITE, EventLoop, _on_gc

BLOCK = 0.1
"""How long a blocking step holds the loop, in seconds (the watchdog's threshold: 20 ms)."""
SLOT = 0.99
"""Histogram values are a slot's middle, within 0.8 % of what was recorded."""

HEALTH_KEYS = {
    "iteration_p50_ms",
    "iteration_p99_ms",
    "delay_p50_ms",
    "delay_p99_ms",
    "delay_max_ms",
    "utilisation",
    "ready",
    "timers",
    "tasks",
    "gc_pauses",
    "gc_pause_ms",
    "gc_pause_max_ms",
}


@pytest.fixture
def watched() -> Iterator[EventLoop]:
    """A loop with its watchdog on at 20 ms, closed after the test."""
    lp = EventLoop(slow_callback_ms=20)
    try:
        yield lp
    finally:
        lp.close()


def slow_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]


async def a_coroutine_that_blocks(times: int) -> None:
    for _ in range(times):
        time.sleep(BLOCK)
        await asyncio.sleep(0)


@pytest.mark.timeout(30)
def test_a_coroutine_that_blocks_n_times_is_the_top_site_with_count_n(
    watched: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    n = 3
    watched.run_until_complete(watched.create_task(a_coroutine_that_blocks(n), name="t-1"))
    sites = watched.slow_sites()
    mine = [s for s in sites if "a_coroutine_that_blocks()" in s.site]
    assert len(mine) == 1, sites
    assert mine[0].iterations == n
    assert mine[0].total_ms >= n * BLOCK * 1000
    assert mine[0].max_ms >= BLOCK * 1000
    assert sites[0] is mine[0]
    assert "t-1" not in mine[0].site  # a site is the code, not the task running it
    assert watched.health().sites == sites


@pytest.mark.timeout(30)
def test_two_tasks_running_one_coroutine_are_one_site(watched: EventLoop) -> None:
    for name in ("one", "two"):  # one after the other: each its own slow iteration
        watched.run_until_complete(watched.create_task(a_coroutine_that_blocks(1), name=name))
    mine = [s for s in watched.slow_sites() if "a_coroutine_that_blocks()" in s.site]
    assert [s.iterations for s in mine] == [2]


async def another_coroutine_that_blocks() -> None:
    time.sleep(BLOCK)


async def a_framework_runs(handler: Callable[[], Awaitable[None]]) -> None:
    await handler()


@pytest.mark.timeout(30)
def test_the_site_is_the_innermost_coroutine_not_the_framework_around_it(
    watched: EventLoop,
) -> None:
    watched.run_until_complete(a_framework_runs(lambda: a_coroutine_that_blocks(1)))
    watched.run_until_complete(a_framework_runs(another_coroutine_that_blocks))
    sites = {s.site.split(" (")[0]: s.iterations for s in watched.slow_sites()}
    assert sites.get("coroutine a_coroutine_that_blocks()") == 1, sites
    assert sites.get("coroutine another_coroutine_that_blocks()") == 1, sites
    assert not any("a_framework_runs" in site for site in sites)


@pytest.mark.timeout(30)
def test_sites_past_the_bound_are_counted_together(
    watched: EventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(muxio.loop, "MAX_SITES", 2)

    async def third_coroutine_that_blocks() -> None:
        time.sleep(BLOCK)

    for blocker in (another_coroutine_that_blocks, third_coroutine_that_blocks):
        watched.run_until_complete(a_framework_runs(blocker))
        watched.run_until_complete(a_framework_runs(blocker))
    watched.run_until_complete(a_coroutine_that_blocks(1))
    sites = {s.site.split(" (")[0]: s.iterations for s in watched.slow_sites()}
    assert len(sites) <= 3, sites
    assert sum(sites.values()) == watched.stats()["slow_iterations"]
    assert sites.get(muxio.loop.OTHER_SITE, 0) >= 1, sites


@pytest.mark.timeout(60)
def test_gc_collect_on_the_loop_is_counted_apart_and_blamed_in_the_slow_report(
    watched: EventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    heap = [[] for _ in range(300_000)]  # a gen-2 collection over it takes tens of ms
    before = watched.stats()
    assert before["gc_pauses"] == 0
    watched.call_soon(gc.collect)
    watched.call_soon(watched.call_soon, watched.stop)
    watched.run_forever()
    del heap
    after = watched.stats()
    assert after["gc_pauses"] >= 1
    assert after["gc_pause_ms"] >= after["gc_pause_max_ms"] > 0
    assert watched.health().gc_generations[2] >= 1
    blamed = [m for m in slow_warnings(caplog) if "garbage collector" in m]
    assert blamed, slow_warnings(caplog)
    assert "generation 2" in blamed[0]
    assert any(s.site.startswith(GC_SITE) for s in watched.slow_sites())


def test_the_gc_hook_is_installed_only_while_a_loop_runs(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    seen: list[bool] = []
    try:
        assert _on_gc not in gc.callbacks
        lp.call_soon(lambda: seen.append(_on_gc in gc.callbacks))
        lp.call_soon(lp.call_soon, lp.stop)
        run_loop(lp)
        assert seen == [True]
        assert _on_gc not in gc.callbacks
    finally:
        lp.close()


@pytest.mark.timeout(30)
def test_a_forked_child_keeps_only_the_loop_of_the_thread_that_forked(run_loop: RunLoop) -> None:
    other = EventLoop(slow_callback_ms=None)
    running = threading.Event()
    other.call_soon(running.set)
    elsewhere = threading.Thread(target=other.run_forever)
    elsewhere.start()
    lp = EventLoop(slow_callback_ms=None)
    try:
        assert running.wait(10)
        codes: list[int] = []

        def fork() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork beside a thread
                pid = os.fork()
            if pid == 0:
                ok = list(muxio.loop._gc_loops.values()) == [lp] and _on_gc in gc.callbacks
                os._exit(0 if ok else 1)
            codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            lp.stop()

        lp.call_soon(fork)
        run_loop(lp)
        assert codes == [0]
    finally:
        other.call_soon_threadsafe(other.stop)
        elsewhere.join(10)
        other.close()
        lp.close()


def test_gc_on_another_thread_is_not_counted_on_the_loop(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:
        done = threading.Event()

        def collect_elsewhere() -> None:
            worker = threading.Thread(target=lambda: (gc.collect(), done.set()))
            worker.start()
            worker.join(10)
            lp.stop()

        lp.call_soon(collect_elsewhere)
        run_loop(lp)
        assert done.is_set()
        assert lp.health().gc_generations[2] == 0  # gen 0 may run here on its own; not gen 2
    finally:
        lp.close()


def test_a_timer_that_runs_late_is_in_the_delay_histogram(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:
        fired: list[float] = []
        lp.call_soon(time.sleep, BLOCK)  # holds the loop past the timer's deadline
        lp.call_later(0.01, lambda: fired.append(lp.time()))
        lp.call_later(0.01, lp.call_soon, lp.stop)
        run_loop(lp)
        assert fired
        stats = lp.stats()
        late_ms = (BLOCK - 0.01) * 1000 * SLOT
        assert stats["delay_max_ms"] >= late_ms
        assert stats["delay_p99_ms"] >= late_ms
        delays = lp.health().delay_ns
        assert sum(delays.values()) >= 1
        assert max(histogram.slot_range(s)[1] for s in delays) >= late_ms * 1e6
    finally:
        lp.close()


def test_a_due_timer_run_after_a_blocking_callback_counts_the_block(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:
        lp.call_soon(time.sleep, BLOCK)
        lp.call_at(lp.time(), lp.stop)  # due in the same iteration, run after the sleep
        run_loop(lp)
        assert lp.stats()["iterations"] == 1
        assert lp.stats()["delay_max_ms"] >= BLOCK * 1000 * SLOT
    finally:
        lp.close()


def test_a_callback_queued_behind_a_blocking_one_is_delayed_by_it(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:

        def block_then_queue() -> None:
            lp.call_soon(lp.stop)  # waits for the rest of this iteration
            time.sleep(BLOCK)

        lp.call_soon(block_then_queue)
        run_loop(lp)
        assert lp.stats()["delay_max_ms"] >= BLOCK * 1000 * SLOT
    finally:
        lp.close()


def test_iteration_histogram_holds_every_iteration(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:
        lp.call_soon(time.sleep, BLOCK)
        lp.call_soon(lp.call_soon, lp.stop)
        run_loop(lp)
        health = lp.health()
        assert sum(health.iteration_ns.values()) == health.iterations
        assert health.stats["iteration_p99_ms"] <= health.stats["max_lag_ms"] * 1.01
        assert health.stats["max_lag_ms"] >= BLOCK * 1000
    finally:
        lp.close()


def _utilisation(spin: bool) -> float:
    lp = EventLoop(slow_callback_ms=None)
    try:
        deadline = time.monotonic() + 0.3

        def work() -> None:
            if time.monotonic() >= deadline:
                lp.stop()
                return
            if spin:
                end = time.monotonic() + 0.005
                while time.monotonic() < end:
                    pass
                lp.call_soon(work)
            else:
                lp.call_later(0.05, work)

        lp.call_soon(work)
        lp.run_forever()
        return lp.stats()["utilisation"]
    finally:
        lp.close()


def test_utilisation_is_a_fraction_and_higher_for_a_busy_loop() -> None:
    idle = _utilisation(spin=False)
    busy = _utilisation(spin=True)
    assert 0.0 <= idle < busy <= 1.0


def test_stats_hold_the_health_keys_and_count_what_is_there_now(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    seen: dict[str, float] = {}
    try:

        async def waits() -> None:
            await asyncio.sleep(10)

        def look() -> None:
            seen.update(lp.stats())
            lp.stop()

        tasks = [lp.create_task(waits()) for _ in range(3)]
        lp.call_later(0.02, look)
        lp.call_later(30, lambda: None)
        run_loop(lp)
        assert seen.keys() >= HEALTH_KEYS
        assert all(isinstance(v, (int, float)) for v in seen.values())
        assert seen["tasks"] == 3
        assert seen["timers"] >= 4  # three sleeps, the 30 s timer (and run_loop's safety)
        for task in tasks:
            task.cancel()
        lp.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        assert lp.stats()["tasks"] == 0
    finally:
        lp.close()


@pytest.mark.timeout(30)
def test_monitor_yields_snapshots_of_each_interval() -> None:
    async def main() -> list[muxio.HealthSnapshot]:
        taken: list[muxio.HealthSnapshot] = []
        async for snap in muxio.monitor(interval=0.05):
            taken.append(snap)
            if len(taken) == 2:  # the next interval: one long iteration, a timer run late
                asyncio.get_running_loop().call_later(0.01, lambda: None)
                time.sleep(BLOCK)
            if len(taken) == 3:
                break
        return taken

    first, second, third = muxio.run(main(), slow_callback_ms=0)
    for snap in (first, second, third):
        assert snap.interval_s > 0
        assert snap.iterations >= 1
        assert snap.iterations_per_s > 0
        assert 0.0 <= snap.utilisation <= 1.0
    assert third.health.iterations > second.health.iterations > first.health.iterations
    late_ms = (BLOCK - 0.01) * 1000
    assert third.delays >= 1 and third.delay_p99_ms >= late_ms * 0.99
    assert third.iteration_p99_ms >= BLOCK * 1000 * 0.99


def test_monitor_snapshot_covers_the_time_since_the_last_one(run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    try:
        mon = muxio.monitor(lp)
        lp.call_soon(lp.call_soon, lp.stop)
        run_loop(lp)
        one = mon.snapshot()
        two = mon.snapshot()
        assert one.iterations >= 2
        assert two.iterations == 0
        assert two.health.iterations == one.health.iterations
    finally:
        lp.close()


def test_monitor_refuses_a_loop_that_is_not_muxios() -> None:
    other = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(TypeError, match=r"muxio.s event loop.*SelectorEventLoop"):
            muxio.monitor(other)
        with pytest.raises(ValueError, match="positive"):
            muxio.monitor(other, interval=0)
    finally:
        other.close()
    with pytest.raises(RuntimeError, match="running"):
        muxio.monitor()


@pytest.mark.timeout(60)
def test_sigusr1_line_carries_delay_utilisation_and_the_top_slow_site() -> None:
    args = ("--port", "0", "--service", "work", "--offload", "none", "--slow-callback-ms", "20")
    with serve_process(*args) as sp, sp.connect() as sock:
        assert round_trip(sock, b"work 150\n") == b"WORK 150\n"
        sp.signal(signal.SIGUSR1)
        line = sp.wait_line(
            r"SIGUSR1: statistics: .*delay_p99_ms=([\d.]+) .*utilisation=([\d.]+) .*"
            r"slow_site_count=(\d+) slow_site_ms=([\d.]+) slow_site=(.+)$"
        )
        assert 0.0 <= float(line.group(2)) <= 1.0
        assert int(line.group(3)) >= 1
        assert float(line.group(4)) >= 150
        assert line.group(5).strip()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def test_iterations_under_the_floor_are_counted_and_longer_ones_placed() -> None:
    from muxio.histogram import slot_range
    from muxio.loop import HEALTH_FLOOR

    lp = EventLoop(slow_callback_ms=None)
    try:
        async def main() -> None:
            for _ in range(50):
                await asyncio.sleep(0)
            asyncio.get_running_loop().call_soon(time.sleep, HEALTH_FLOOR * 40)
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        lp.run_until_complete(main())
        h = lp.health()
    finally:
        lp.close()
    assert sum(h.iteration_ns.values()) == h.iterations
    placed = [s for s in h.iteration_ns if slot_range(s)[0] >= HEALTH_FLOOR * 1e9]
    assert placed, h.iteration_ns  # the sleeping iteration, in its own slot
    under = [n for s, n in h.iteration_ns.items() if slot_range(s)[1] <= HEALTH_FLOOR * 1e9]
    assert sum(under) >= 40  # the quick ones, counted together under the floor


def test_a_bad_health_floor_in_the_environment_is_one_warning_and_the_default() -> None:
    code = "import muxio.loop as m; print(m.HEALTH_FLOOR)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MUXIO_HEALTH_FLOOR_US": "fast", "PYTHONPATH": MUXIO_PATH},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5e-05"
    assert "MUXIO_HEALTH_FLOOR_US='fast' is not a number of microseconds" in out.stderr
