"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client really is.

A load balancer in front of muxio opens its own connection to us, so the
socket's peer is the balancer.  With the PROXY protocol it first sends one
header naming the client's address; `ProxyProtocolGate` reads that header,
then hands the connection to the service with the client's address as the
transport's ``peername`` (the balancer's stays available as
``proxy_source``).

The gate is a protocol in front of the service's, not a step in the server's
accept path: the header arrives through the transport's ordinary
non-blocking reads (so a slow balancer never holds the accept loop or
another connection), it works with any server that takes a protocol factory
(`loop.create_server` too), and the server's code stays the same.  The
service's protocol is created only once the header is good, so a refused
connection never reaches it and never passes a byte on as data.

Both versions are detected from the first bytes.  The parser is pure:
`parse_header(data)` says "need more", returns the header, or raises.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from . import validate
from .server import RateLimitedWarning

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("muxio")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
"""A v1 line's longest form, CRLF included (the specification's bound)."""
V2_MAX = 16 + 2048
"""The largest v2 header taken: addresses and a generous room for TLVs.

The format allows 64 KiB; nothing a load balancer sends (SSL and
unique-id TLVs included) comes near 2 KiB, and a bound keeps a hostile
peer from making us buffer much before the header is refused.
"""
DEFAULT_TIMEOUT = 5.0
_REFUSALS = RateLimitedWarning()
"""The rate limit of gates made without `wrap` (which gives its own)."""

_V2_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}
_V2_FAMILIES = {0x0: "UNSPEC", 0x1: "INET", 0x2: "INET6", 0x3: "UNIX"}
_V2_PROTOCOLS = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}


class ProxyProtocolError(ValueError):
    """The bytes are not a PROXY protocol header (or one too long to take)."""


class ProxyHeader:
    """One parsed header.

    `source` and `destination` are socket-style addresses (``(host, port)``
    for IPv4, ``(host, port, 0, 0)`` for IPv6, a path for Unix), or None
    when the header carries none (``LOCAL``, ``UNKNOWN``, ``UNSPEC``): then
    the connection's own addresses are the right ones.
    """

    __slots__ = ("command", "destination", "family", "length", "source", "tlvs", "version")

    def __init__(
        self,
        *,
        version: int,
        command: str,
        family: str,
        source: Any,
        destination: Any,
        length: int,
        tlvs: list[tuple[int, bytes]] | None = None,
    ) -> None:
        self.version = version
        self.command = command
        self.family = family
        self.source = source
        self.destination = destination
        self.length = length
        self.tlvs = tlvs or []

    def __repr__(self) -> str:
        return (
            f"<ProxyHeader v{self.version} {self.command} {self.family} "
            f"{self.source!r} -> {self.destination!r}>"
        )


def parse_header(data: bytes | bytearray) -> ProxyHeader | None:
    """The header at the start of `data`, or None while more bytes could complete it.

    Raises `ProxyProtocolError` as soon as the bytes so far cannot begin a
    valid header, so a client speaking its own protocol is refused at its
    first read rather than at the timeout.
    """
    head = bytes(data[: len(V2_SIGNATURE)])
    if V2_SIGNATURE.startswith(head):
        return _parse_v2(data) if len(head) == len(V2_SIGNATURE) else None
    if len(head) < len(V1_PREFIX) and V1_PREFIX.startswith(head):
        return None
    if head.startswith(V1_PREFIX):
        return _parse_v1(data)
    raise ProxyProtocolError("no PROXY protocol header (the first bytes are neither v1 nor v2)")


def _parse_v1(data: bytes | bytearray) -> ProxyHeader | None:
    end = bytes(data[:V1_MAX]).find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
        if b"\n" in data[:V1_MAX] or b"\r" in data[: len(data) - 1]:
            raise ProxyProtocolError("v1 header has a line ending other than CRLF")
        return None
    line = bytes(data[:end])
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) < 2 or parts[0] != "PROXY":
        raise ProxyProtocolError("v1 header does not begin with 'PROXY '")
    family = parts[1]
    if family == "UNKNOWN":
        return ProxyHeader(
            version=1, command="PROXY", family="UNKNOWN", source=None, destination=None,
            length=end + 2,
        )
    if family not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header has unknown protocol {family[:8]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError("v1 header needs 4 fields after the protocol, one space apart")
    src, dst = (_v1_address(parts[i], family) for i in (2, 3))
    sport, dport = (_v1_port(parts[i]) for i in (4, 5))
    extra = (0, 0) if family == "TCP6" else ()
    return ProxyHeader(
        version=1,
        command="PROXY",
        family="INET6" if family == "TCP6" else "INET",
        source=(src, sport, *extra),
        destination=(dst, dport, *extra),
        length=end + 2,
    )


def _v1_address(text: str, family: str) -> str:
    _, percent, scope = text.partition("%")
    if percent and not (scope.isascii() and scope.isdigit()):
        # an interface name here would reach the logs and the service as the peer's address
        raise ProxyProtocolError(
            f"v1 header has an address with a non-numeric scope id {text[:45]!r}"
        )
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 header has an invalid address {text[:45]!r}") from None
    if addr.version != (6 if family == "TCP6" else 4):
        raise ProxyProtocolError(f"v1 header: {text!r} is not a {family} address")
    return str(addr)


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"v1 header has an invalid port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header has an invalid port {text[:8]!r}")
    return port


def _parse_v2(data: bytes | bytearray) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    ver_cmd, fam_proto, size = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"v2 header has version {ver_cmd >> 4}, not 2")
    command = {0: "LOCAL", 1: "PROXY"}.get(ver_cmd & 0xF)
    if command is None:
        raise ProxyProtocolError(f"v2 header has unknown command {ver_cmd & 0xF}")
    family = _V2_FAMILIES.get(fam_proto >> 4)
    if family is None or (fam_proto & 0xF) not in _V2_PROTOCOLS:
        raise ProxyProtocolError(f"v2 header has unknown address family 0x{fam_proto:02x}")
    total = 16 + size
    if total > V2_MAX:
        raise ProxyProtocolError(f"v2 header of {total} bytes is over the {V2_MAX} taken")
    if len(data) < total:
        return None
    body = bytes(data[16:total])
    addr_size = _V2_ADDRESS_SIZES.get(fam_proto >> 4, 0)
    if size < addr_size:
        raise ProxyProtocolError(f"v2 header too short for its {family} addresses")
    source: Any = None
    destination: Any = None
    if command == "PROXY":
        if family == "INET":
            s, d, sp, dp = struct.unpack_from("!4s4sHH", body)
            source = (socket.inet_ntop(socket.AF_INET, s), sp)
            destination = (socket.inet_ntop(socket.AF_INET, d), dp)
        elif family == "INET6":
            s, d, sp, dp = struct.unpack_from("!16s16sHH", body)
            source = (str(ipaddress.IPv6Address(s)), sp, 0, 0)
            destination = (str(ipaddress.IPv6Address(d)), dp, 0, 0)
        elif family == "UNIX":
            source, destination = (_unix_path(body[i : i + 108]) for i in (0, 108))
    return ProxyHeader(
        version=2,
        command=command,
        family=family,
        source=source,
        destination=destination,
        length=total,
        tlvs=_parse_tlvs(body[addr_size:]),
    )


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_tlvs(raw: bytes) -> list[tuple[int, bytes]]:
    tlvs = []
    at = 0
    while at < len(raw):
        if len(raw) - at < 3:
            raise ProxyProtocolError("v2 header ends inside a TLV")
        kind, size = struct.unpack_from("!BH", raw, at)
        at += 3
        if at + size > len(raw):
            raise ProxyProtocolError("v2 header has a TLV longer than the header")
        tlvs.append((kind, raw[at : at + size]))
        at += size
    return tlvs


def _show(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address)


class ProxyProtocolGate(asyncio.Protocol):
    """Reads the PROXY header, then hands the connection to the service's protocol.

    On success the transport's extra info gets ``peername`` and
    ``sockname`` from the header (when it carries addresses), the
    connection's own ones as ``proxy_source`` and ``proxy_destination``,
    and the header itself as ``proxy_header``; the service's protocol then
    sees `connection_made` and any bytes that followed the header.  A bad,
    oversized, missing (the peer closed) or late header aborts the
    connection with a warning, and the service never hears of it.  The
    warnings are rate-limited (one a second, then a count of the rest), as
    TLS handshake failures are: 10,000 bad headers must not be 10,000 lines.
    """

    __slots__ = ("_buffer", "_done", "_factory", "_refusals", "_timeout", "_timer", "_transport")

    def __init__(
        self,
        protocol_factory: Callable[[], Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        refusals: RateLimitedWarning | None = None,
    ) -> None:
        self._factory = protocol_factory
        self._timeout = timeout
        self._refusals = refusals if refusals is not None else _REFUSALS
        self._buffer = bytearray()
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    @classmethod
    def wrap(
        cls,
        protocol_factory: Callable[[], Any],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl: Any = None,
    ) -> Callable[[], ProxyProtocolGate]:
        """A protocol factory that puts a gate in front of each new connection.

        Its gates share one rate limit for their warnings, so one server's
        refusals are counted together.  With `ssl` (a server `SSLContext`)
        each gate starts TLS itself after the header: what a loop whose
        `create_server(ssl=...)` would put TLS in front of the gate needs
        (asyncio's own).  muxio's server does it without: give it `ssl`
        as usual, and not here too.
        """
        timeout = validate.header_timeout(timeout, "timeout")
        refusals = RateLimitedWarning()

        def factory() -> ProxyProtocolGate:
            gate = cls(protocol_factory, timeout=timeout, refusals=refusals)
            if ssl is not None:
                gate.wrap_service(lambda service: _tls_layer(service, ssl))
            return gate

        return factory

    def wrap_service(self, wrap: Callable[[Any], Any]) -> None:
        """Hand the connection to `wrap(service protocol)`: a TLS layer, after the header.

        The header comes first on the wire, before the ClientHello (HAProxy's
        `send-proxy-v2` in front of TLS passthrough), so muxio's server
        gives a gate its TLS layer here rather than wrapping the gate in it.
        """
        factory = self._factory
        self._factory = lambda: wrap(factory())

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        # the running loop, not transport.get_loop(): asyncio's own transports have none
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        try:
            header = parse_header(self._buffer)
        except ProxyProtocolError as exc:
            self._refuse(str(exc))
            return
        if header is not None:
            self._hand_over(header)

    def eof_received(self) -> bool | None:
        if not self._done:
            what = "an incomplete" if self._buffer else "no"
            self._refuse(f"the peer closed after {what} PROXY protocol header")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._done = True

    def is_busy(self) -> bool:
        return False

    def _too_slow(self) -> None:
        self._timer = None
        if not self._done:
            self._refuse(f"no complete PROXY protocol header within {self._timeout:g} s")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, reason: str) -> None:
        self._done = True
        self._cancel_timer()
        peer = self._transport.get_extra_info("peername")
        self._refusals.warn("closed a connection from %s: %s", _show(peer), reason)
        self._buffer.clear()
        self._transport.abort()

    def _hand_over(self, header: ProxyHeader) -> None:
        self._done = True
        self._cancel_timer()
        transport = self._transport
        own_peer = transport.get_extra_info("peername")
        own_sock = transport.get_extra_info("sockname")
        extra = _extra_of(transport)
        extra["proxy_source"] = own_peer
        extra["proxy_destination"] = own_sock
        extra["proxy_header"] = header
        if header.source is not None:
            extra["peername"] = header.source
            extra["sockname"] = header.destination
        rest = bytes(self._buffer[header.length :])
        self._buffer = bytearray()
        if header.command == "LOCAL":
            log.debug("PROXY LOCAL connection from %s (a health check)", _show(own_peer))
        else:
            log.debug(
                "connection from %s via %s (PROXY v%d)",
                _show(header.source or own_peer), _show(own_peer), header.version,
            )
        try:
            protocol = self._factory()
        except Exception as exc:
            transport.abort()
            asyncio.get_running_loop().call_exception_handler(
                {"message": "Error on transport creation for incoming connection",
                 "exception": exc}
            )
            return
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest and not transport.is_closing():
            _deliver(protocol, rest)


def _tls_layer(service: Any, context: Any) -> Any:
    """Server-side TLS over the running loop's transport: muxio's layer, or asyncio's own."""
    from .loop import EventLoop

    loop = asyncio.get_running_loop()
    if isinstance(loop, EventLoop):
        return loop._ssl_protocol(service, context, server_side=True)
    from asyncio import sslproto

    return sslproto.SSLProtocol(loop, service, context, None, server_side=True)  # type: ignore[arg-type]


def _extra_of(transport: Any) -> dict[str, Any]:
    """The transport's extra-info dict: muxio's and asyncio's both keep one as `_extra`."""
    extra: dict[str, Any] | None = getattr(transport, "_extra", None)
    if extra is None:
        extra = {}
        transport._extra = extra
    return extra


def _deliver(protocol: Any, data: bytes) -> None:
    """Give `data` to a plain or a buffered protocol, as the transport would."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            if not n:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        protocol.data_received(data)


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 line for these addresses (what a balancer sends; for tests and clients)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def v2_header(
    source: tuple[str, int] | None = None,
    destination: tuple[str, int] | None = None,
    *,
    tlvs: list[tuple[int, bytes]] | None = None,
) -> bytes:
    """A v2 header: PROXY for the given addresses, LOCAL when there are none."""
    tail = b"".join(struct.pack("!BH", k, len(v)) + v for k, v in tlvs or ())
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tail)) + tail
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError(f"source {src} and destination {dst} are not of one address family")
    fam = 0x21 if src.version == 6 else 0x11
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tail
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(body)) + body


__all__ = [
    "ProxyHeader",
    "ProxyProtocolError",
    "ProxyProtocolGate",
    "parse_header",
    "v1_header",
    "v2_header",
]
