"""The callbacks a service implements, with asyncio's names and meanings.

A protocol is told about one connection's life: `connection_made`, then any
number of `data_received`, maybe `eof_received`, then exactly one
`connection_lost`.  Flow control reaches it as `pause_writing` /
`resume_writing` when the transport's write buffer crosses its water marks.
"""

from __future__ import annotations

import asyncio
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
