"""The tutorial's service: every byte answered with its `bytes.upper()`.

Replies have exactly the request's length and need no framing, so the
protocol is stateless and its whole hot path is one `write`.
"""

from __future__ import annotations

from ..protocol import Protocol
from ..transports.stream import Transport


class UpperEcho(Protocol):
    """Uppercase echo with back-pressure: a peer that does not read stops being read."""

    __slots__ = ("transport",)

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()
