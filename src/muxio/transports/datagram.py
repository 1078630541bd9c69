"""Datagram transports (UDP and Unix datagram sockets) with asyncio's contract.

The contract is that of asyncio's selector datagram transport and of
`BaseEventLoop.create_datagram_endpoint`, for the Python that runs us: where
3.10 to 3.13 differ (`reuse_address`, the check on `sock=`, empty datagrams,
the buffer's per-datagram overhead) we behave as the running version's asyncio.
Only the public loop API is used, so the same code serves asyncio's own loop
and muxio's.

Like the stream transport, `sendto()` sends at once and buffers only what the
kernel refuses, and the socket is watched for writability only while that
buffer is non-empty.  Reads go into one preallocated buffer per thread: a
plain `recvfrom(256 KiB)` allocates and frees 256 KiB for every datagram,
which costs several times the copy of the few bytes actually received.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import sys
import threading
import warnings
from asyncio import trsock
from typing import TYPE_CHECKING

from ..listeners import clear_unix_path, set_reuse_port
from ..resolve import numeric_info
from .base import FlowControlTransport

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TypeVar

    _P = TypeVar("_P", bound=asyncio.DatagramProtocol)
    _AddrInfo = tuple[int, int, int, str, Any]


__all__ = ["DatagramTransport", "create_datagram_endpoint"]

log = logging.getLogger("muxio")

_PY311 = sys.version_info >= (3, 11)
_PY313 = sys.version_info >= (3, 13)
_SEND_EMPTY = _PY313
"""3.13 sends a zero-length datagram; earlier versions silently drop it."""
_DATAGRAM_OVERHEAD = 8 if _PY313 else 0
"""3.13 counts a UDP header per buffered datagram against the water marks."""
_HAS_IPV6 = hasattr(socket, "AF_INET6")


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_unset: Any = _Unset()

_per_thread = threading.local()


def _read_buffer(size: int) -> memoryview:
    """A receive buffer shared by the transports of the calling thread.

    Sharing is safe because a datagram is copied out of it before any
    protocol code runs, and one thread runs one loop's callbacks at a time.
    """
    buffers: dict[int, memoryview] | None = getattr(_per_thread, "buffers", None)
    if buffers is None:
        buffers = _per_thread.buffers = {}
    view = buffers.get(size)
    if view is None:
        view = buffers[size] = memoryview(bytearray(size))
    return view


def _drop_datagram(data: bytes, addr: Any) -> None:
    """Stands in for the protocol's method once the connection is lost."""


def _drop_error(exc: Exception) -> None:
    """Stands in for the protocol's method once the connection is lost."""


class DatagramTransport(FlowControlTransport, asyncio.Transport, asyncio.DatagramTransport):
    """A datagram socket driven by a loop's reader and writer callbacks."""

    __slots__ = (
        "_address",
        "_connected",
        "_datagram_received",
        "_error_received",
        "_paused",
        "_reader_on",
        "_reading_started",
        "_recvfrom_into",
        "_rview",
        "_send",
        "_sendto",
        "_sock",
        "_writer_on",
    )

    max_size = 256 * 1024
    """Largest datagram received whole; longer ones are truncated, as in asyncio."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Take over `sock`; the protocol hears `connection_made` on the next loop turn.

        `address` is the default destination (the `remote_addr` given to
        `create_datagram_endpoint`); `sendto()` refuses any other.
        """
        info: dict[str, Any] = {} if extra is None else extra
        info["socket"] = trsock.TransportSocket(sock)
        try:
            info["sockname"] = sock.getsockname()
        except OSError:
            info["sockname"] = None
        if "peername" not in info:
            try:
                info["peername"] = sock.getpeername()
            except OSError:
                info["peername"] = None
        super().__init__(info)
        self._init_base(loop, sock.fileno(), protocol)
        self._init_flow_control()
        self._sock = sock
        self._address = address
        # '' is the name of a connected socketpair() peer: still connected.
        self._connected = info["peername"] is not None
        self._recvfrom_into = sock.recvfrom_into
        self._send = sock.send
        self._sendto = sock.sendto
        self._rview = _read_buffer(self.max_size)
        self._bind_protocol(protocol)
        self._buffer: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._paused = False
        self._reader_on = False
        self._reading_started = False
        self._writer_on = False
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_wake, waiter)

    def _bind_protocol(self, protocol: Any) -> None:
        self._protocol: asyncio.DatagramProtocol | None = protocol
        self._datagram_received: Callable[[bytes, Any], object] = protocol.datagram_received
        self._error_received: Callable[[Exception], object] = protocol.error_received

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._bind_protocol(protocol)

    # -- reading -------------------------------------------------------------

    def _start_reading(self) -> None:
        """Runs after `connection_made`, so no datagram can arrive before it."""
        self._reading_started = True
        if not (self._closing or self._paused):
            self._reader_on = True
            self._loop.add_reader(self._fd, self._on_read)

    def _on_read(self) -> None:
        """One datagram per readiness event, like the stream transport's one `recv`."""
        if not self._reader_on:
            return  # an event already queued when reading stopped
        try:
            n, addr = self._recvfrom_into(self._rview)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._error_received(exc)  # ICMP errors on a connected socket: not fatal
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
            return
        self._datagram_received(self._rview[:n].tobytes(), addr)

    def is_reading(self) -> bool:
        return not (self._closing or self._paused)

    def pause_reading(self) -> None:
        """Stop reading; datagrams then wait in, and overflow from, the kernel's queue."""
        if self._closing or self._paused:
            return
        self._paused = True
        if self._reader_on:
            self._reader_on = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._reading_started:
            self._reader_on = True
            self._loop.add_reader(self._fd, self._on_read)

    # -- writing -------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send now if the kernel takes it, else queue it (as an immutable copy).

        Errors the kernel reports for one datagram (ICMP results, EMSGSIZE)
        go to `error_received` and drop that datagram; an address the socket
        module rejects is fatal to the transport, as in asyncio.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data and not _SEND_EMPTY:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        buf = self._buffer
        if self._closing and not buf:  # still flushing, asyncio queues it behind the rest
            self._drop_write("socket.send() raised exception.")
            return
        if not buf:
            try:
                if self._connected:
                    self._send(data)
                else:
                    self._sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                if not self._writer_on:
                    self._writer_on = True
                    self._loop.add_writer(self._fd, self._on_write)
            except OSError as exc:
                self._error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        buf.append((bytes(data), addr))
        self._buffered += len(data) + _DATAGRAM_OVERHEAD
        self._maybe_pause_protocol()

    def _on_write(self) -> None:
        buf = self._buffer
        while buf:
            data, addr = buf[0]
            try:
                if self._connected:
                    self._send(data)
                else:
                    self._sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                buf.popleft()
                self._buffered -= len(data) + _DATAGRAM_OVERHEAD
                self._error_received(exc)
                if self._lost:
                    return
                continue
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
            buf.popleft()
            self._buffered -= len(data) + _DATAGRAM_OVERHEAD
        if self._protocol_paused:
            self._maybe_resume_protocol()  # which may send again
            if self._lost:
                return
        if not buf:
            self._stop_writing()
            if self._closing:
                self._lose(None)

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Stop reading, send what is buffered, then `connection_lost(None)`.

        As asyncio's: `sendto()` from here on queues behind what is still
        buffered, and is dropped once nothing is.
        """
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._lose(None)

    def abort(self) -> None:
        """Close now, dropping whatever is still buffered."""
        self._force_close(None)

    def _stop_reading(self) -> None:
        if self._reader_on:
            self._reader_on = False
            self._loop.remove_reader(self._fd)

    def _stop_writing(self) -> None:
        if self._writer_on:
            self._writer_on = False
            self._loop.remove_writer(self._fd)

    def _unwatch(self, exc: BaseException | None) -> None:
        self._stop_reading()
        self._stop_writing()  # registered still if a callback closed us mid-flush

    def _release(self) -> None:
        self._sock.close()
        self._datagram_received = _drop_datagram
        self._error_received = _drop_error

    def __del__(self, _warn: Callable[..., object] = warnings.warn) -> None:
        sock: socket.socket | None = getattr(self, "_sock", None)
        if sock is not None and sock.fileno() != -1:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    def __repr__(self) -> str:
        if self._lost:
            state = "closed"
        elif self._closing:
            state = "closing"
        else:
            state = "open"
        return f"<DatagramTransport fd={self._fd} {state} buffered={self._buffered}>"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled():
        waiter.set_result(None)


# -- creating endpoints ------------------------------------------------------


async def _resolve(
    loop: asyncio.AbstractEventLoop, addr: tuple[Any, Any], family: int, proto: int, flags: int
) -> Sequence[_AddrInfo]:
    host, port = addr
    # asyncio's shortcut keeps the caller's text: `sendto` compares addresses by value
    info = numeric_info(host, port, family, socket.SOCK_DGRAM, proto, as_given=True)
    if info is not None:
        return [info]
    return await loop.getaddrinfo(
        host, port, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
    )


def _check_reuse_address(reuse_address: Any) -> None:
    """3.10 refuses True and deprecates False (bpo-37228); 3.11 removed the argument."""
    if reuse_address is _unset or _PY311:
        return
    if reuse_address:
        raise ValueError(
            "Passing `reuse_address=True` is no longer supported, as the usage of "
            "SO_REUSEPORT in UDP poses a significant security concern."
        )
    warnings.warn(
        "The *reuse_address* parameter has been deprecated as of 3.5.10 and is "
        "scheduled for removal in 3.11.",
        DeprecationWarning,
        stacklevel=3,
    )


async def create_datagram_endpoint(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], _P],
    local_addr: Any = None,
    remote_addr: Any = None,
    *,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    reuse_address: Any = _unset,
    reuse_port: bool | None = None,
    allow_broadcast: bool | None = None,
    sock: socket.socket | None = None,
) -> tuple[DatagramTransport, _P]:
    """`loop.create_datagram_endpoint()` for any loop that has the public API.

    Returns once the protocol's `connection_made` has run, as asyncio does.
    """
    if reuse_address is not _unset and _PY311:
        raise TypeError(
            "create_datagram_endpoint() got an unexpected keyword argument 'reuse_address'"
        )
    owned = sock is None
    r_addr: Any = None
    if sock is not None:
        _check_given_socket(
            sock, local_addr, remote_addr, family, proto, flags, reuse_port, allow_broadcast
        )
        sock.setblocking(False)
    else:
        pairs = await _address_pairs(loop, local_addr, remote_addr, family, proto, flags)
        _check_reuse_address(reuse_address)
        errors: list[OSError] = []
        for (fam, pro), (local, remote) in pairs:
            candidate = None
            try:
                candidate = socket.socket(fam, socket.SOCK_DGRAM, pro)
                if reuse_port:
                    set_reuse_port(candidate)
                if allow_broadcast:
                    candidate.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                candidate.setblocking(False)
                if local_addr:
                    candidate.bind(local)
                if remote_addr:
                    if not allow_broadcast:
                        candidate.connect(remote)  # a datagram connect() never blocks
                    r_addr = remote
            except OSError as exc:
                if candidate is not None:
                    candidate.close()
                errors.append(exc)
                r_addr = None
            except BaseException:
                if candidate is not None:
                    candidate.close()
                raise
            else:
                sock = candidate
                break
        else:
            raise errors[0]

    try:
        protocol = protocol_factory()
    except BaseException:
        if owned:
            sock.close()
        raise
    waiter: asyncio.Future[None] = loop.create_future()
    transport = DatagramTransport(loop, sock, protocol, r_addr, waiter)
    if loop.get_debug():
        if local_addr:
            log.info(
                "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                local_addr,
                remote_addr,
                transport,
                protocol,
            )
        else:
            log.debug(
                "Datagram endpoint remote_addr=%r created: (%r, %r)",
                remote_addr,
                transport,
                protocol,
            )
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    return transport, protocol


def _check_given_socket(
    sock: socket.socket,
    local_addr: Any,
    remote_addr: Any,
    family: int,
    proto: int,
    flags: int,
    reuse_port: bool | None,
    allow_broadcast: bool | None,
) -> None:
    if _PY313:
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")
    opts = {
        "local_addr": local_addr,
        "remote_addr": remote_addr,
        "family": family,
        "proto": proto,
        "flags": flags,
        "reuse_port": reuse_port,
        "allow_broadcast": allow_broadcast,
    }
    problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
    if problems:
        raise ValueError(
            "socket modifier keyword arguments can not be used when sock is specified. "
            f"({problems})"
        )


async def _address_pairs(
    loop: asyncio.AbstractEventLoop,
    local_addr: Any,
    remote_addr: Any,
    family: int,
    proto: int,
    flags: int,
) -> list[tuple[tuple[int, int], tuple[Any, Any]]]:
    """The (family, proto) and (local, remote) addresses to try, in order."""
    if not (local_addr or remote_addr):
        if family == 0:
            raise ValueError("unexpected address family")
        return [((family, proto), (None, None))]
    if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
        for addr in (local_addr, remote_addr):
            if addr is not None and not isinstance(addr, str):
                raise TypeError("string is expected")
        if local_addr:
            clear_unix_path(local_addr, socket.SOCK_DGRAM)
        return [((family, proto), (local_addr, remote_addr))]
    found: dict[tuple[int, int], list[Any]] = {}  # ordered: the resolver's preference
    for idx, addr in ((0, local_addr), (1, remote_addr)):
        if addr is None:
            continue
        if not (isinstance(addr, tuple) and len(addr) == 2):
            if _PY311:
                raise TypeError("2-tuple is expected")
            raise AssertionError("2-tuple is expected")
        infos = await _resolve(loop, addr, family, proto, flags)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        for fam, _, pro, _, address in infos:
            found.setdefault((fam, pro), [None, None])[idx] = address
    pairs = [
        (key, (local, remote))
        for key, (local, remote) in found.items()
        if not ((local_addr and local is None) or (remote_addr and remote is None))
    ]
    if not pairs:
        raise ValueError("can not get address information")
    return pairs
