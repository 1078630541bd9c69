"""asyncio's TLS layer with one read buffer per loop instead of 256 KiB per connection.

`sslproto.SSLProtocol` (3.11+) gives every connection its own
`bytearray(256 KiB)` to receive into, zero-filled at construction, so each
one, idle or still waiting for its ClientHello, costs a quarter of a
megabyte of RSS: 2,000 silent handshakes took 600 MiB.  The buffer holds
bytes only between the transport's `recv_into` and `buffer_updated`, which
copies them into the TLS layer's incoming `MemoryBIO` before anything else
runs.  muxio's stream transport makes that pair in one synchronous step on
the loop's thread, so every TLS connection of a loop can receive into the
same buffer: nothing per connection, and reads as large as before (no cost
per byte).  A server-side connection also starts its handshake only once
the client has sent something (see `_do_handshake`).

What stays per connection (benchmarks/tls_memory.py, docs/performance.md):
about 20 KiB idle and 13 KiB before the ClientHello, mostly OpenSSL's
`SSL` object; after a transfer, OpenSSL's memory BIOs keep the size of the
largest read and write they held (they never shrink), up to ~256 KiB each.

Imported on first use: it imports `ssl`, which most servers never need.
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto
from typing import Any

_BUFFERED = issubclass(sslproto.SSLProtocol, asyncio.BufferedProtocol)
"""3.10's `SSLProtocol` reads through `data_received`, with no buffer of its own."""

READ_SIZE = 256 * 1024
"""The shared buffer's size: asyncio's own per-connection size, so reads stay as large."""


def loop_read_buffer(loop: Any) -> memoryview:
    """The buffer every TLS connection on `loop` receives into, made on first use."""
    view: memoryview | None = loop._tls_read_buffer
    if view is None:
        view = memoryview(bytearray(READ_SIZE))
        loop._tls_read_buffer = view
    return view


class SharedBufferSSLProtocol(sslproto.SSLProtocol):
    """`SSLProtocol` receiving into its loop's shared buffer; only for muxio's transports.

    A transport that kept the buffer between `get_buffer` and
    `buffer_updated` while another connection read (a completion-based
    one) would mix connections' bytes, so this is used only where muxio
    builds the transport itself.
    """

    max_size = 16 * 1024
    """What `SSLProtocol.__init__` allocates (dropped at once) and the chunk
    `data_received` protocols are read in: one TLS record's plaintext at most,
    which is all one `SSLObject.read` returns anyway."""

    def __init__(self, loop: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(loop, *args, **kwargs)
        if _BUFFERED:
            self._ssl_buffer_view = loop_read_buffer(loop)
            self._ssl_buffer = self._ssl_buffer_view.obj

    def get_buffer(self, n: int) -> memoryview:
        return self._ssl_buffer_view

    def _do_handshake(self) -> None:
        """Not before the ClientHello: OpenSSL's first step takes ~33 KiB, output none.

        A server's handshake cannot go anywhere until the client speaks,
        but `connection_made` starts it at once, and the handshake buffers
        it allocates would be held by every connection that stays silent
        (the timeout still runs: it is armed before this).
        """
        if self._server_side and not self._incoming.pending:  # type: ignore[attr-defined]
            return
        super()._do_handshake()  # type: ignore[misc]
