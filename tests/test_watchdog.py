"""The loop's one iteration in both modes, and the one place the watchdog reads.

Debug mode used to run a second iteration function that never stamped its
iterations, so a blocking callback gave no slow-iteration warning and no
stats there.  These tests block the loop for real (one deliberate
`time.sleep`) in normal and debug mode and check the warning and the stats;
they name nothing private but `_running`, so renaming a local in the loop
cannot break them.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest
from conftest import RunLoop

import muxio
from muxio import watchdog
from muxio.loop import EventLoop

BLOCK = 0.25
"""How long the blocking callbacks hold the loop, in seconds (threshold: 50 ms)."""


def a_callback_that_blocks_the_loop() -> None:
    time.sleep(BLOCK)


def slow_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "slow callback" in r.getMessage()]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_debug_mode_still_reports_slow_iterations(
    debug: bool, run_loop: RunLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    lp = EventLoop(slow_callback_ms=50)
    lp.set_debug(debug)
    try:
        lp.call_soon(a_callback_that_blocks_the_loop)
        lp.call_soon(lp.stop)  # same iteration: it ends, is reported, and the loop stops
        run_loop(lp)
    finally:
        lp.close()
    stats = lp.stats()
    assert stats["slow_iterations"] >= 1
    assert stats["max_lag_ms"] >= BLOCK * 1000 * 0.6
    slow = slow_warnings(caplog)
    assert len(slow) == stats["slow_iterations"], slow
    assert any("a_callback_that_blocks_the_loop" in m for m in slow), slow
    executing = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.getMessage().startswith("Executing")
    ]
    if debug:  # asyncio's own per-callback warning, as in asyncio's debug mode
        assert any("a_callback_that_blocks_the_loop" in m for m in executing), executing
    else:
        assert executing == []


async def a_coroutine_that_blocks_the_loop() -> None:
    await asyncio.sleep(0)
    time.sleep(BLOCK)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_the_watchdog_names_the_blocking_coroutine_in_both_modes(
    debug: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(
            a_coroutine_that_blocks_the_loop(), name="the-blocker"
        )
        await task

    muxio.run(main(), debug=debug, slow_callback_ms=50)
    slow = slow_warnings(caplog)
    assert any(
        "coroutine a_coroutine_that_blocks_the_loop() in task 'the-blocker'" in m for m in slow
    ), slow


@pytest.mark.timeout(30)
@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_a_blocking_c_callback_is_named_in_both_modes(
    debug: bool, run_loop: RunLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="muxio")
    lp = EventLoop(slow_callback_ms=50)
    lp.set_debug(debug)
    try:
        lp.call_soon(time.sleep, BLOCK)
        lp.call_soon(lp.stop)
        run_loop(lp)
    finally:
        lp.close()
    slow = slow_warnings(caplog)
    assert any("callback sleep (not Python code)" in m for m in slow), slow


@pytest.mark.timeout(30)
def test_set_debug_while_running_takes_effect_from_the_next_iteration(
    run_loop: RunLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    lp = EventLoop(slow_callback_ms=50)
    try:
        lp.call_soon(lp.set_debug, True)
        lp.call_soon(lambda: lp.call_soon(a_callback_that_blocks_the_loop))
        lp.call_soon(lambda: lp.call_soon(lp.stop))
        run_loop(lp)
    finally:
        lp.close()
    executing = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executing")]
    assert any("a_callback_that_blocks_the_loop" in m for m in executing), executing


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_running_holds_the_handle_or_io_callback_being_run(debug: bool, run_loop: RunLoop) -> None:
    lp = EventLoop(slow_callback_ms=None)
    lp.set_debug(debug)
    seen: dict[str, object] = {}
    a, b = socket.socketpair()
    try:
        a.setblocking(False)

        def on_readable() -> None:
            seen["reader"] = lp._running.now
            lp.remove_reader(a.fileno())
            lp.stop()

        def from_the_timer() -> None:
            seen["timer"] = lp._running.now
            lp.add_reader(a.fileno(), on_readable)
            b.send(b"x")

        def from_call_soon() -> None:
            seen["soon"] = lp._running.now

        soon = lp.call_soon(from_call_soon)
        timer = lp.call_later(0.001, from_the_timer)
        run_loop(lp)
        assert seen["soon"] is soon
        assert seen["timer"] is timer
        # add_reader's callback runs through its own handle, as asyncio's does
        handle = getattr(seen["reader"], "__self__", None)
        assert isinstance(handle, asyncio.Handle)
        assert handle._callback is on_readable
        assert lp._running.now is None  # nothing kept once the iteration is over
    finally:
        a.close()
        b.close()
        lp.close()


def test_the_exception_handler_in_debug_mode_says_where_the_running_handle_was_made(
    run_loop: RunLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    lp = EventLoop(slow_callback_ms=None)
    lp.set_debug(True)

    def reports() -> None:
        lp.call_exception_handler({"message": "reported from a callback"})
        lp.stop()

    try:
        lp.call_soon(reports)
        run_loop(lp)
    finally:
        lp.close()
    logged = [m for m in (r.getMessage() for r in caplog.records) if "from a callback" in m]
    assert len(logged) == 1, logged
    assert "Handle created at (most recent call last)" in logged[0], logged
    assert "lp.call_soon(reports)" in logged[0], logged


def test_the_watchdog_module_does_not_import_the_loop() -> None:
    tree = ast.parse((Path(watchdog.__file__).parent / "watchdog.py").read_text())  # or its .so
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        f".{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is None
        for alias in node.names
    }
    assert not {name for name in imported if name.endswith("loop")}, imported


@pytest.mark.timeout(30)
@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_a_blocking_io_callback_is_reported_in_both_modes_and_timed_in_debug(
    debug: bool, run_loop: RunLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    lp = EventLoop(slow_callback_ms=50)
    lp.set_debug(debug)
    a, b = socket.socketpair()

    def an_io_callback_that_blocks_the_loop() -> None:
        lp.remove_reader(a.fileno())
        time.sleep(BLOCK)
        lp.stop()

    try:
        lp.add_reader(a.fileno(), an_io_callback_that_blocks_the_loop)
        b.send(b"x")
        run_loop(lp)
    finally:
        a.close()
        b.close()
        lp.close()
    assert lp.stats()["slow_iterations"] >= 1
    slow = slow_warnings(caplog)
    assert any("an_io_callback_that_blocks_the_loop" in m for m in slow), slow
    executing = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.getMessage().startswith("Executing <Handle")
    ]
    assert any("an_io_callback_that_blocks_the_loop" in m for m in executing) is debug, executing


def test_a_transport_callback_in_its_context_is_python_code_not_ctx_run() -> None:
    import contextvars

    from muxio.transports.base import InContext
    from muxio.watchdog import _python_code

    class Reader:
        def on_read(self) -> None:
            pass

    callback = InContext(contextvars.copy_context().run, Reader().on_read)
    assert _python_code(callback) is Reader.on_read.__code__
    assert _python_code(contextvars.copy_context().run) is None
