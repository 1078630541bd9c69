"""The loops the pipe and subprocess tests run on.

"asyncio" is `asyncio.new_event_loop()`'s loop with its two pipe methods and
its subprocess hook (`_make_subprocess_transport`, which asyncio's own
`subprocess_exec`/`subprocess_shell` call) replaced by muxio.transports'
functions, exactly the way muxio's loop calls them; so
`asyncio.create_subprocess_exec` and the pipes that `base_subprocess` connects
go through our code too.  "muxio" is muxio's
own loop, through its methods, once it has them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest

import muxio
from muxio.transports import pipes
from muxio.transports import subprocess as msub

LOOP_KINDS = ["asyncio", "muxio"]
WAIT = 10.0
"""Bound of every wait in these tests, in seconds."""

T = TypeVar("T")


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "muxio":
        loop: asyncio.AbstractEventLoop = muxio.new_event_loop()
        return loop
    loop = asyncio.new_event_loop()
    routed: dict[str, Any] = {
        "connect_read_pipe": functools.partial(pipes.connect_read_pipe, loop),
        "connect_write_pipe": functools.partial(pipes.connect_write_pipe, loop),
        "_make_subprocess_transport": functools.partial(msub.start_transport, loop),
    }
    for name, method in routed.items():
        setattr(loop, name, method)
    return loop


def run(loop: asyncio.AbstractEventLoop, aw: Awaitable[T], timeout: float = WAIT) -> T:
    """Run `aw` to completion on `loop`, failing after `timeout` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(aw, timeout)

    return loop.run_until_complete(bounded())


@pytest.fixture(params=LOOP_KINDS, name="loop")
def loop_fixture(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """`loop` in the modules that import this: each test once per kind, closed after."""
    lp = new_loop(request.param)
    try:
        yield lp
    finally:
        lp.close()
