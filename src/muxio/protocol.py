"""The callbacks a service implements, with asyncio's names and meanings.

A protocol is told about one connection's life: `connection_made`, then any
number of `data_received`, maybe `eof_received`, then exactly one
`connection_lost`.  Flow control reaches it as `pause_writing` /
`resume_writing` when the transport's write buffer crosses its water marks.

`protocol_busy()` is how a graceful drain asks any protocol, muxio's or
asyncio's, whether it still owes a reply.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .transports.stream import Transport


class BaseProtocol(asyncio.BaseProtocol):
    """No-op defaults, so a service overrides only what it uses.

    They are asyncio's protocol classes plus `is_busy()`: any asyncio
    protocol runs on muxio, and a muxio protocol on any asyncio loop.
    """

    __slots__ = ()

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        """The connection is up; keep `transport` to write and close."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is gone: `exc` is None for a clean close."""

    def pause_writing(self) -> None:
        """The write buffer passed its high-water mark: stop producing."""

    def resume_writing(self) -> None:
        """The write buffer drained below its low-water mark."""

    def is_busy(self) -> bool:
        """Whether replies are still being produced off the transport.

        A graceful shutdown waits for a busy protocol (work running in a
        pool, say) before it half-closes the connection.
        """
        return False


class Protocol(BaseProtocol, asyncio.Protocol):
    """A byte-stream protocol."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        """Some bytes arrived; there is no message framing in TCP."""

    def eof_received(self) -> bool | None:
        """The peer will send no more.

        Return a true value to keep the connection half-open (and close it
        yourself later); otherwise the transport closes once every pending
        reply is written.
        """
        return None


def protocol_busy(protocol: object) -> bool | None:
    """Whether `protocol` is still producing a reply: what a graceful drain waits for.

    A muxio protocol says so itself (`is_busy()`).  asyncio's
    `StreamReaderProtocol` (an `async def handler(reader, writer)`, as
    `asyncio.start_server` and `muxio serve --service mod:handler` run it)
    has no such method, but its handler task tells: running, and not
    waiting on an empty reader for the next request, means it is working on
    one.  A handler parked in `reader.read()` is idle and is ended by the
    EOF the drain's close feeds it.  Any other protocol cannot say: None,
    and its transport judges by its traffic (see `Transport.judge_traffic`).
    """
    probe = _busy_probe(protocol)
    return None if probe is None else bool(probe())


def says_if_busy(protocol: object) -> bool:
    """Whether `protocol_busy()` can ask `protocol` itself, found without calling it."""
    return _busy_probe(protocol) is not None


def _busy_probe(protocol: object) -> Callable[[], object] | None:
    """What tells whether `protocol` is busy: its `is_busy`, a stream handler's task, or None."""
    own: Callable[[], object] | None = getattr(protocol, "is_busy", None)
    if own is not None:
        return own
    if isinstance(protocol, asyncio.StreamReaderProtocol):
        return functools.partial(_stream_handler_busy, protocol)
    return None


def _stream_handler_busy(protocol: asyncio.StreamReaderProtocol) -> bool:
    task: asyncio.Task[object] | None = getattr(protocol, "_task", None)
    if task is None or task.done():
        return False
    reader: asyncio.StreamReader | None = getattr(protocol, "_stream_reader", None)
    if reader is None:
        return True
    waiting_for_input = getattr(reader, "_waiter", None) is not None
    return not (waiting_for_input and not getattr(reader, "_buffer", b""))
