"""Deliberately broken event loops for the tests of conformance/asyncio_suite.py.

These are fault injection: a real loop that misbehaves on demand (errors in
every task, or never returns) is the only way to prove that the script reports
a difference, and survives a hang, without waiting for a real bug.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Generator
from typing import Any


class TaskRefusingLoop(asyncio.SelectorEventLoop):
    """Refuses to create tasks, so anything run on it errors."""

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        raise RuntimeError("this loop refuses tasks")


class HangingLoop(asyncio.SelectorEventLoop):
    """Never returns from run_until_complete, like a loop stuck in its poller."""

    def run_until_complete(self, future: Any) -> Any:
        threading.Event().wait()


def refusing() -> asyncio.AbstractEventLoop:
    return TaskRefusingLoop()


def hanging() -> asyncio.AbstractEventLoop:
    return HangingLoop()


def broken() -> asyncio.AbstractEventLoop:
    raise OSError("no poller available")
