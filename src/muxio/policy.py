"""uvloop's entry points: `new_event_loop`, `EventLoopPolicy`, `run`.

`asyncio.run(main(), loop_factory=muxio.new_event_loop)` (Python 3.12+) and
`asyncio.Runner(loop_factory=...)` (3.11+) need nothing from here but the
factory; `muxio.run` gives the same on every supported Python.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import events
from collections.abc import Coroutine
from typing import Any, TypeVar

from .loop import EventLoop
from .loopenv import UNSET, Unset, loop_settings

T = TypeVar("T")

_BasePolicy: Any = getattr(events, "BaseDefaultEventLoopPolicy", None) or getattr(  # noqa: B009
    events, "_BaseDefaultEventLoopPolicy"
)


def _deprecated_watchers(name: str) -> None:
    if sys.version_info >= (3, 12):
        import warnings

        warnings.warn(
            f"{name}() is deprecated as of 3.12 and will be removed in 3.14.",
            DeprecationWarning,
            stacklevel=3,
        )


def new_event_loop(
    poller: str | None = None, *, slow_callback_ms: float | Unset | None = UNSET
) -> EventLoop:
    """A muxio loop on `poller`; the watchdog names callbacks slower than `slow_callback_ms`.

    Left out, each comes from `MUXIO_POLLER` / `MUXIO_SLOW_CALLBACK_MS` (else auto
    and 100 ms): `--loop muxio:new_event_loop` on another server's command line
    calls this with no arguments, so the environment is the only way to tune it.
    """
    poller, slow_callback_ms = loop_settings(poller, slow_callback_ms)
    return EventLoop(poller, slow_callback_ms=slow_callback_ms)


class EventLoopPolicy(_BasePolicy):  # type: ignore[misc]
    """`asyncio.set_event_loop_policy(muxio.EventLoopPolicy())`: every new loop is muxio's."""

    def __init__(
        self, poller: str | None = None, *, slow_callback_ms: float | Unset | None = UNSET
    ) -> None:
        super().__init__()
        self._poller = poller
        self._slow_callback_ms = slow_callback_ms

    def _loop_factory(self) -> EventLoop:
        return new_event_loop(self._poller, slow_callback_ms=self._slow_callback_ms)

    # asyncio's child watchers (deprecated in 3.12, gone in 3.14): muxio's subprocess
    # transports watch their own children (pidfd, else a waitpid thread per child), so a
    # watcher handed in is kept for whoever asks for it, and never used.

    def get_child_watcher(self) -> Any:
        _deprecated_watchers("get_child_watcher")
        return getattr(self, "_child_watcher", None)

    def set_child_watcher(self, watcher: Any) -> None:
        _deprecated_watchers("set_child_watcher")
        self._child_watcher = watcher


def run(
    main: Coroutine[Any, Any, T],
    *,
    poller: str | None = None,
    debug: bool | None = None,
    slow_callback_ms: float | Unset | None = UNSET,
) -> T:
    """`asyncio.run(main)` on a muxio loop: same cancellation, asyncgen and executor shutdown."""

    settings = loop_settings(poller, slow_callback_ms)  # a bad variable fails before main starts

    def factory() -> EventLoop:
        return new_event_loop(settings[0], slow_callback_ms=settings[1])

    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            value: T = runner.run(main)
            return value
    return _run_310(main, factory(), debug)  # pragma: no cover - Python 3.10


def _run_310(main: Coroutine[Any, Any, T], loop: EventLoop, debug: bool | None) -> T:
    """Python 3.10 has no `asyncio.Runner`: the same steps as its `asyncio.run`."""
    if events._get_running_loop() is not None:
        raise RuntimeError("muxio.run() cannot be called from a running event loop")
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    try:
        events.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        result: T = loop.run_until_complete(main)
        return result
    finally:
        try:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    loop.call_exception_handler(
                        {
                            "message": "unhandled exception during muxio.run() shutdown",
                            "exception": task.exception(),
                            "task": task,
                        }
                    )
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            events.set_event_loop(None)
            loop.close()
