"""Peer-suite tests muxio's loop is allowed not to pass, each with the reason why.

Keys are `suite::pytest node id` (e.g. ``"anyio::tests/test_x.py::test_y[asyncio]"``) or
``fnmatch`` patterns over them; values say why the difference is accepted.  An entry
without a reason is refused.  Excluded tests are deselected on muxio's side only.
"""

from __future__ import annotations

# Not excluded: anyio's tests/test_sockets.py::TestTCPStream::test_send_receive[asyncio-ipv4]
# fails on muxio's side on a machine without IPv6 `localhost` only, from sockets that anyio's
# own server_sock fixture leaks there and the garbage collector finalizes during this test
# (conformance/README.md); with IPv6 `localhost` it passes, and an exclusion would hide that.

_DESCRIPTOR_IO = (
    "muxio's stream transport reads and writes the socket's descriptor (os.read/os.readv/"
    "os.write/os.writev), not the socket object's recv/send, 930 instructions per 1 KiB echo "
    "request fewer under callgrind (15,853 -> 14,928, main at 93cbb31); the test passes a "
    "socket.socket subclass whose overridden recv/recv_into must be called (docs/asyncio.md)"
)

EXCLUSIONS: dict[str, str] = {
    "websockets::tests/legacy/test_client_server.py::ClientServerTests::test_explicit_socket": (
        _DESCRIPTOR_IO
    ),
    "websockets::tests/legacy/test_client_server.py::SecureClientServerTests::"
    "test_explicit_socket": _DESCRIPTOR_IO,
}
