"""Socket coroutines for muxio's asyncio-compatible loop.

Each function takes the loop as its first argument so `EventLoop` can bind
it as a method (`sock_recv = net.sock_recv`) while `loop.py` stays the core.
They touch the loop only through the public `AbstractEventLoop` API, so they
run, and are tested, on asyncio's stock loop as well.

The contract is that of asyncio's selector loop on Python 3.10-3.13
(arguments, exceptions and their messages, version differences included).
The inside differs in one way: the readiness callback only wakes the waiting
coroutine, which makes the system call itself.  A `sock_recv` or
`sock_accept` cancelled as its data arrives therefore leaves the data or the
connection in the kernel for the next caller, where asyncio's loses it; and
coroutines waiting on one descriptor share one registration, so a second
`sock_recv` on a socket no longer strands the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import itertools
import logging
import os
import socket
import stat
import sys
import weakref
from asyncio import AbstractEventLoop
from asyncio import constants as _aio_constants
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

__all__ = [
    "bind_server_sockets",
    "bind_unix_server_socket",
    "close_unix_server_socket",
    "connect_socket",
    "getaddrinfo",
    "getnameinfo",
    "open_server_sockets",
    "sock_accept",
    "sock_connect",
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_recvfrom_into",
    "sock_sendall",
    "sock_sendfile",
    "sock_sendto",
    "unix_connect_socket",
]

_FALLBACK_BLOCK = 256 * 1024
_SendfileMode: Any = _aio_constants._SendfileMode  # asyncio's marker on transports
log = logging.getLogger("muxio")

T = TypeVar("T")
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

_PY313 = sys.version_info >= (3, 13)
_HAS_IPV6 = hasattr(socket, "AF_INET6")
_SENDFILE_FALLBACK_BUFSIZE = 256 * 1024
# getaddrinfo flags that cannot change the answer for a numeric host and port
_NUMERIC_SAFE_FLAGS = socket.AI_PASSIVE | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


# -- readiness ----------------------------------------------------------------

_Registry = dict[tuple[int, bool], "_Interest"]
_registries: weakref.WeakKeyDictionary[AbstractEventLoop, _Registry] = weakref.WeakKeyDictionary()


def _wake(interest: _Interest) -> None:
    for fut in interest.waiters:
        if not fut.done():
            fut.set_result(None)


class _Interest:
    """One loop registration per (fd, direction), shared by every waiting coroutine.

    The loop allows a single reader and a single writer per descriptor; two
    operations each calling `add_reader` would strand the first.  The
    registration is made on the first wait, not before, so an operation whose
    first system call succeeds costs no poller change at all.
    """

    __slots__ = ("owner", "registry", "users", "waiters")

    def __init__(self, registry: _Registry, owner: socket.socket) -> None:
        self.registry = registry
        # a socket closed while waited on frees its fd for a new socket, which
        # must get its own registration rather than join the dead one's
        self.owner = weakref.ref(owner)
        self.users = 0
        self.waiters: list[asyncio.Future[None]] = []


class _Waiter:
    """Waits for readiness of one fd in one direction for the span of a `with`."""

    __slots__ = ("fd", "interest", "loop", "sock", "write")

    def __init__(self, loop: AbstractEventLoop, sock: socket.socket, write: bool) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.write = write
        self.interest: _Interest | None = None

    def __enter__(self) -> _Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        interest = self.interest
        if interest is None:
            return
        self.interest = None
        interest.users -= 1
        if interest.users == 0 and interest.registry.get((self.fd, self.write)) is interest:
            del interest.registry[(self.fd, self.write)]
            if not self.loop.is_closed():
                if self.write:
                    self.loop.remove_writer(self.fd)
                else:
                    self.loop.remove_reader(self.fd)

    async def wait(self) -> None:
        interest = self.interest
        if interest is None:
            registry = _registries.get(self.loop)
            if registry is None:
                registry = _registries[self.loop] = {}
            key = (self.fd, self.write)
            interest = registry.get(key)
            if interest is None or interest.owner() is not self.sock:
                interest = _Interest(registry, self.sock)
                if self.write:
                    self.loop.add_writer(self.fd, _wake, interest)
                else:
                    self.loop.add_reader(self.fd, _wake, interest)
                registry[key] = interest
            interest.users += 1
            self.interest = interest
        fut: asyncio.Future[None] = self.loop.create_future()
        interest.waiters.append(fut)
        try:
            await fut
        finally:
            interest.waiters.remove(fut)


async def _until_ready(
    loop: AbstractEventLoop, sock: socket.socket, write: bool, attempt: Callable[[], T]
) -> T:
    """`attempt()` now, and again on each readiness, until it does not block.

    `attempt` looks the socket method up on every call, as asyncio does: a
    caller (or a test) may replace it between tries.
    """
    try:
        return attempt()
    except (BlockingIOError, InterruptedError):
        pass
    with _Waiter(loop, sock, write) as waiter:
        while True:
            await waiter.wait()
            try:
                return attempt()
            except (BlockingIOError, InterruptedError):
                pass


def _check_socket(loop: AbstractEventLoop, sock: socket.socket) -> None:
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    if loop.get_debug() and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


# -- names ----------------------------------------------------------------------


def _numeric_port(port: object) -> int | None:
    """The port as `socket.getaddrinfo` would read it, or None when unsure."""
    if port is None:
        return 0
    if type(port) is int:
        return port if 0 <= port <= 0xFFFF else None
    if isinstance(port, bytes):
        try:
            port = port.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(port, str) and port.isascii():
        if port == "":
            return 0
        if port.isdigit() and int(port) <= 0xFFFF:
            return int(port)
    return None


def _numeric_info(
    host: object,
    port: object,
    family: int,
    type: int,
    proto: int,
    flowinfo: int = 0,
    scopeid: int = 0,
) -> AddrInfo | None:
    """The one getaddrinfo answer for an IP literal, without asking the resolver.

    None whenever the resolver could answer differently (names, service
    names, zone indices, odd type/proto pairs): the caller then asks it.
    """
    if type == socket.SOCK_STREAM:
        expected = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        expected = socket.IPPROTO_UDP
    else:
        return None
    if proto not in (0, expected) or host is None:
        return None
    portnum = _numeric_port(port)
    if portnum is None:
        return None
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(host, str) or not host.isascii() or "%" in host:
        return None
    if family == socket.AF_UNSPEC:
        families = [socket.AF_INET, socket.AF_INET6] if _HAS_IPV6 else [socket.AF_INET]
    elif family == socket.AF_INET or (_HAS_IPV6 and family == socket.AF_INET6):
        families = [socket.AddressFamily(family)]
    else:
        return None
    for af in families:
        try:
            packed = socket.inet_pton(af, host)
        except (OSError, ValueError):
            continue
        text = socket.inet_ntop(af, packed)
        kind = socket.SocketKind(type)
        if af == socket.AF_INET:
            return af, kind, expected, "", (text, portnum)
        return af, kind, expected, "", (text, portnum, flowinfo, scopeid)
    return None


async def getaddrinfo(
    loop: AbstractEventLoop,
    host: bytes | str | None,
    port: bytes | str | int | None,
    *,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[AddrInfo]:
    """`socket.getaddrinfo` off the loop's thread, as resolvers may block for seconds.

    An IP literal with a numeric port and a stream or datagram type has only
    one possible answer, computed here without a trip through the executor.
    """
    if not flags & ~_NUMERIC_SAFE_FLAGS:
        info = _numeric_info(host, port, family, type, proto)
        if info is not None:
            return [info]
    resolve = cast("Callable[..., list[AddrInfo]]", socket.getaddrinfo)
    return await loop.run_in_executor(None, resolve, host, port, family, type, proto, flags)


async def getnameinfo(
    loop: AbstractEventLoop, sockaddr: tuple[Any, ...], flags: int = 0
) -> tuple[str, str]:
    """`socket.getnameinfo` off the loop's thread: reverse lookups block too."""
    return await loop.run_in_executor(None, socket.getnameinfo, sockaddr, flags)


async def _ensure_resolved(
    loop: AbstractEventLoop,
    address: Sequence[Any],
    *,
    family: int = 0,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
    flags: int = 0,
) -> list[AddrInfo]:
    host, port = address[:2]
    info = _numeric_info(host, port, family, type, proto, *address[2:])
    if info is not None:
        return [info]
    # the loop's own resolver, so a loop (or a test) that replaces it is obeyed
    infos = await loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    return list(infos)


# -- socket operations ----------------------------------------------------------


async def sock_recv(loop: AbstractEventLoop, sock: socket.socket, nbytes: int) -> bytes:
    """Receive up to `nbytes`; b"" at end of stream."""
    _check_socket(loop, sock)
    return await _until_ready(loop, sock, False, lambda: sock.recv(nbytes))


async def sock_recv_into(loop: AbstractEventLoop, sock: socket.socket, buf: Any) -> int:
    """Receive into the writable buffer `buf`; the count received, 0 at end of stream."""
    _check_socket(loop, sock)
    return await _until_ready(loop, sock, False, lambda: sock.recv_into(buf))


async def sock_recvfrom(
    loop: AbstractEventLoop, sock: socket.socket, bufsize: int
) -> tuple[bytes, Any]:
    """Receive one datagram: (data, address)."""
    _check_socket(loop, sock)
    return await _until_ready(loop, sock, False, lambda: sock.recvfrom(bufsize))


async def sock_recvfrom_into(
    loop: AbstractEventLoop, sock: socket.socket, buf: Any, nbytes: int = 0
) -> tuple[int, Any]:
    """Receive one datagram into `buf`: (count, address)."""
    _check_socket(loop, sock)
    if not nbytes:
        nbytes = len(buf)
    return await _until_ready(loop, sock, False, lambda: sock.recvfrom_into(buf, nbytes))


async def sock_sendall(loop: AbstractEventLoop, sock: socket.socket, data: Any) -> None:
    """Send all of `data`; on error there is no telling how much the peer got."""
    _check_socket(loop, sock)
    view = memoryview(data).cast("B")
    try:
        sent = sock.send(view)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent == len(view):
        return
    with _Waiter(loop, sock, True) as waiter:
        while sent < len(view):
            await waiter.wait()
            with contextlib.suppress(BlockingIOError, InterruptedError):
                sent += sock.send(view[sent:])


async def sock_sendto(loop: AbstractEventLoop, sock: socket.socket, data: Any, address: Any) -> int:
    """Send one datagram to `address`; the count sent."""
    _check_socket(loop, sock)
    return await _until_ready(loop, sock, True, lambda: sock.sendto(data, address))


async def sock_connect(loop: AbstractEventLoop, sock: socket.socket, address: Any) -> None:
    """Connect, resolving a host name first for IP sockets as asyncio does."""
    _check_socket(loop, sock)
    if sock.family == socket.AF_INET or (_HAS_IPV6 and sock.family == socket.AF_INET6):
        resolved = await _ensure_resolved(
            loop, address, family=sock.family, type=sock.type, proto=sock.proto
        )
        address = resolved[0][4]
    try:
        sock.connect(address)
    except (BlockingIOError, InterruptedError):
        pass
    else:
        return
    with _Waiter(loop, sock, True) as waiter:
        await waiter.wait()
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        raise OSError(err, f"Connect call failed {address}")


async def sock_accept(loop: AbstractEventLoop, sock: socket.socket) -> tuple[socket.socket, Any]:
    """Accept one connection: (non-blocking socket, peer address)."""
    _check_socket(loop, sock)

    def accept() -> tuple[socket.socket, Any]:
        conn, address = sock.accept()
        conn.setblocking(False)
        return conn, address

    return await _until_ready(loop, sock, False, accept)


# -- sendfile -------------------------------------------------------------------


def _check_sendfile_params(sock: socket.socket, file: Any, offset: object, count: object) -> None:
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


async def sock_sendfile(
    loop: AbstractEventLoop,
    sock: socket.socket,
    file: Any,
    offset: int = 0,
    count: int | None = None,
    *,
    fallback: bool = True,
) -> int:
    """Send `file` from `offset` (`count` bytes, or to EOF); the count sent.

    The kernel copies with `os.sendfile` when it can; otherwise, if
    `fallback`, chunks are read in the executor and sent with `sock_sendall`.
    Afterwards the file position is just past the last byte sent.
    """
    if loop.get_debug() and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")
    _check_socket(loop, sock)
    _check_sendfile_params(sock, file, offset, count)
    try:
        return await _sendfile_native(loop, sock, file, offset, count)
    except asyncio.SendfileNotAvailableError:
        if not fallback:
            raise
    return await _sendfile_fallback(loop, sock, file, offset, count)


async def _sendfile_native(
    loop: AbstractEventLoop, sock: socket.socket, file: Any, offset: int, count: int | None
) -> int:
    sendfile = getattr(os, "sendfile", None)
    if sendfile is None:
        raise asyncio.SendfileNotAvailableError("os.sendfile() is not available")
    try:
        fileno = file.fileno()
    except (AttributeError, io.UnsupportedOperation):
        raise asyncio.SendfileNotAvailableError("not a regular file") from None
    try:
        fsize = os.fstat(fileno).st_size
    except OSError:
        raise asyncio.SendfileNotAvailableError("not a regular file") from None
    blocksize = count if count else fsize
    if not blocksize:
        return 0
    fd = sock.fileno()
    total = 0
    try:
        with _Waiter(loop, sock, True) as waiter:
            while True:
                if count:
                    blocksize = count - total
                    if blocksize <= 0:
                        return total
                # 32-bit platforms overflow past 1 GiB
                blocksize = min(blocksize, sys.maxsize // 2 + 1)
                try:
                    sent = sendfile(fd, fileno, offset + total, blocksize)
                except (BlockingIOError, InterruptedError):
                    await waiter.wait()
                    continue
                except OSError as exc:
                    if total == 0:
                        # not a mmap-able file, most likely: plain send() may still work
                        raise asyncio.SendfileNotAvailableError("os.sendfile call failed") from exc
                    if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                        raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
                    raise
                if sent == 0:
                    return total
                total += sent
                # let other callbacks run between chunks, as asyncio does
                await waiter.wait()
    finally:
        if total > 0:
            os.lseek(fileno, offset + total, os.SEEK_SET)


async def _sendfile_fallback(
    loop: AbstractEventLoop, sock: socket.socket, file: Any, offset: int, count: int | None
) -> int:
    if offset:
        file.seek(offset)
    blocksize = min(count, _SENDFILE_FALLBACK_BUFSIZE) if count else _SENDFILE_FALLBACK_BUFSIZE
    buf = bytearray(blocksize)
    total = 0
    try:
        while True:
            if count:
                blocksize = min(count - total, blocksize)
                if blocksize <= 0:
                    break
            view = memoryview(buf)[:blocksize]
            read = await loop.run_in_executor(None, file.readinto, view)
            if not read:
                break
            await sock_sendall(loop, sock, view[:read])
            total += read
        return total
    finally:
        if total > 0 and hasattr(file, "seek"):
            file.seek(offset + total)


# -- connecting -----------------------------------------------------------------


def _lower_reason(exc: OSError) -> str:
    """How asyncio quotes an OSError inside its own messages (changed in 3.13)."""
    if _PY313 or not exc.strerror:
        return str(exc).lower()
    return exc.strerror.lower()


def _interleave(infos: list[AddrInfo], first_family_count: int = 1) -> list[AddrInfo]:
    """Alternate address families (RFC 8305), `first_family_count` of the first one first."""
    by_family: dict[int, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    head: list[AddrInfo] = []
    if first_family_count > 1:
        head = lists[0][: first_family_count - 1]
        del lists[0][: first_family_count - 1]
    rest = itertools.chain.from_iterable(itertools.zip_longest(*lists))
    return head + [info for info in rest if info is not None]


async def _connect_one(
    loop: AbstractEventLoop,
    errors: list[list[OSError]],
    info: AddrInfo,
    local_infos: list[AddrInfo] | None,
) -> socket.socket:
    mine: list[OSError] = []
    errors.append(mine)
    family, type_, proto, _, address = info
    sock = None
    try:
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        if local_infos is not None:
            for lfamily, _, _, _, laddr in local_infos:
                if lfamily != family:
                    continue
                try:
                    sock.bind(laddr)
                    break
                except OSError as exc:
                    msg = f"error while attempting to bind on address {laddr!r}: "
                    mine.append(OSError(exc.errno, msg + _lower_reason(exc)))
            else:
                if mine:
                    raise mine.pop()
                raise OSError(f"no matching local address with family={family!r} found")
        await sock_connect(loop, sock, address)
        return sock
    except OSError as exc:
        mine.append(exc)
        if sock is not None:
            sock.close()
        raise
    except BaseException:
        if sock is not None:
            sock.close()
        raise


def _connect_error(errors: list[OSError], all_errors: bool) -> BaseException:
    """asyncio's one exception for every failed attempt."""
    if all_errors and sys.version_info >= (3, 11):
        return ExceptionGroup("create_connection failed", errors)  # noqa: F821 (3.11+)
    if len(errors) == 1:
        return errors[0]
    model = str(errors[0])
    if all(str(exc) == model for exc in errors):
        return errors[0]
    return OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))


async def connect_socket(
    loop: AbstractEventLoop,
    host: str | None,
    port: int | str | None,
    *,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    local_addr: tuple[Any, ...] | None = None,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    all_errors: bool = False,
) -> socket.socket:
    """A connected non-blocking TCP socket, as `create_connection` makes one.

    Every address `host` resolves to is tried in turn, or raced with
    `happy_eyeballs_delay` between starts (RFC 8305); sockets that lose are
    closed.  `all_errors` (Python 3.11+) raises an ExceptionGroup of every
    attempt's error instead of asyncio's single summary OSError.
    """
    if all_errors and sys.version_info < (3, 11):
        raise TypeError("all_errors needs Python 3.11 or later (ExceptionGroup)")
    if host is None and port is None:
        raise ValueError("host and port was not specified and no sock specified")
    if happy_eyeballs_delay is not None and interleave is None:
        interleave = 1
    infos = await _ensure_resolved(
        loop, (host, port), family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
    )
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    local_infos = None
    if local_addr is not None:
        local_infos = await _ensure_resolved(
            loop, local_addr, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
        )
        if not local_infos:
            raise OSError("getaddrinfo() returned empty list")
    if interleave:
        infos = _interleave(infos, interleave)

    errors: list[list[OSError]] = []
    sock: socket.socket | None = None
    if happy_eyeballs_delay is None:
        for info in infos:
            try:
                sock = await _connect_one(loop, errors, info, local_infos)
                break
            except OSError:
                continue
    else:
        sock = await _race(loop, errors, infos, local_infos, happy_eyeballs_delay)
    if sock is not None:
        return sock
    flat = [exc for sub in errors for exc in sub]
    try:
        raise _connect_error(flat, all_errors)
    finally:
        del flat, errors


async def _race(
    loop: AbstractEventLoop,
    errors: list[list[OSError]],
    infos: list[AddrInfo],
    local_infos: list[AddrInfo] | None,
    delay: float,
) -> socket.socket | None:
    """Happy eyeballs through asyncio's own `staggered_race`."""
    from asyncio import staggered

    connected: list[socket.socket] = []

    async def attempt(info: AddrInfo) -> socket.socket:
        sock = await _connect_one(loop, errors, info, local_infos)
        connected.append(sock)
        return sock

    coro_fns: Iterable[Callable[[], Awaitable[socket.socket]]] = (
        functools.partial(attempt, info) for info in infos
    )
    winner: socket.socket | None = None
    try:
        winner, _, race_errors = await staggered.staggered_race(coro_fns, delay, loop=loop)
    finally:
        # a success the race did not return (we were cancelled at its end) must not leak
        for sock in connected:
            if sock is not winner:
                sock.close()
    if winner is None and not any(errors):
        # a failure that is not an OSError is a bug worth seeing, not a refusal
        for exc in race_errors:
            if exc is not None:
                raise exc
    return winner


async def unix_connect_socket(
    loop: AbstractEventLoop, path: str | bytes | os.PathLike[Any]
) -> socket.socket:
    """A connected non-blocking Unix stream socket."""
    address = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
    try:
        sock.setblocking(False)
        await sock_connect(loop, sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


# -- listening ------------------------------------------------------------------


def set_reuse_port(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


def open_server_sockets(
    infos: Iterable[AddrInfo],
    *,
    backlog: int = 100,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    keep_alive: bool | None = None,
) -> list[socket.socket]:
    """Listening non-blocking sockets on already resolved addresses, as `create_server`.

    Duplicates are bound once.  A failure closes every socket already made.
    """
    if reuse_address is None:
        reuse_address = os.name == "posix" and sys.platform != "cygwin"
    unique = list(dict.fromkeys(infos))
    sockets: list[socket.socket] = []
    completed = False
    try:
        for family, type_, proto, _, sockaddr in unique:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError:
                # a family the kernel lacks: the other addresses may still do
                log.debug("cannot create socket(%r, %r, %r)", family, type_, proto, exc_info=True)
                continue
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
            if reuse_port:
                set_reuse_port(sock)
            if keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            if _HAS_IPV6 and family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # one socket per family: Linux would otherwise take v4 on the v6 one too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                msg = f"error while attempting to bind on address {sockaddr!r}: "
                msg += _lower_reason(err)
                if _PY313 and err.errno == errno.EADDRNOTAVAIL:
                    # the family is configured off (bpo-30945)
                    sockets.pop()
                    sock.close()
                    log.debug("%s", msg)
                    continue
                raise OSError(err.errno, msg) from None
        if not sockets:
            raise OSError(f"could not bind on any address out of {[info[4] for info in unique]!r}")
        for sock in sockets:
            sock.setblocking(False)
            sock.listen(backlog)
        completed = True
    finally:
        if not completed:
            for sock in sockets:
                sock.close()
    return sockets


async def bind_server_sockets(
    loop: AbstractEventLoop,
    host: str | bytes | Iterable[str] | None,
    port: int | str | None,
    *,
    family: int = socket.AF_UNSPEC,
    flags: int = socket.AI_PASSIVE,
    backlog: int = 100,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    keep_alive: bool | None = None,
) -> list[socket.socket]:
    """What `create_server` listens on for `host` (a name, '' or None for all, or several).

    Each host is resolved through the loop and every distinct address gets
    its own socket; with port 0 each socket gets its own ephemeral port, as
    in asyncio.
    """
    if host is None and port is None:
        raise ValueError("Neither host/port nor sock were specified")
    hosts: list[Any]
    if host == "" or host == b"":
        hosts = [None]
    elif isinstance(host, (str, bytes)) or not isinstance(host, Iterable):
        hosts = [host]
    else:
        hosts = list(host)

    async def resolve(one: Any) -> list[AddrInfo]:
        infos = await _ensure_resolved(
            loop, (one, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({one!r}) returned empty list")
        return infos

    tasks = [loop.create_task(resolve(one)) for one in hosts]
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return open_server_sockets(
        itertools.chain.from_iterable(results),
        backlog=backlog,
        reuse_address=reuse_address,
        reuse_port=reuse_port,
        keep_alive=keep_alive,
    )


_unix_files: weakref.WeakKeyDictionary[socket.socket, tuple[str, int, int]] = (
    weakref.WeakKeyDictionary()
)
"""Listening Unix sockets' files: (path, device, inode) when we bound them."""


def _is_abstract(path: str | bytes) -> bool:
    return bool(path) and path[0] in (0, "\0")


def bind_unix_server_socket(
    path: str | bytes | os.PathLike[Any], *, backlog: int = 100, cleanup_socket: bool = True
) -> socket.socket:
    """A listening non-blocking Unix socket at `path`, replacing a stale socket file.

    Only a socket file is removed first: anything else at `path` makes bind
    fail, so a mistyped path cannot delete a user's file.  With
    `cleanup_socket`, `close_unix_server_socket` removes the file again if it
    is still the one bound here.
    """
    address = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    remove_stale_unix_socket(address)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"Address {address!r} is already in use") from None
        raise
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    if cleanup_socket:
        remember_unix_socket(sock)
    return sock


def remove_stale_unix_socket(path: str | bytes) -> None:
    """Remove a socket file left at `path`; anything else there is left for bind to refuse."""
    if _is_abstract(path):
        return
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        # the directory may let us create a socket without letting us look
        log.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


def remember_unix_socket(sock: socket.socket) -> None:
    """Note the file a listening Unix socket was just bound to, so only it is removed later."""
    bound = sock.getsockname()
    if isinstance(bound, str) and bound and not _is_abstract(bound):
        with contextlib.suppress(OSError):
            info = os.lstat(bound)
            _unix_files[sock] = (bound, info.st_dev, info.st_ino)


def remove_unix_socket_file(sock: socket.socket) -> None:
    """Unlink a listening socket's file, unless another server has replaced it since."""
    entry = _unix_files.pop(sock, None)
    if entry is None:
        return
    path, dev, ino = entry
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == (dev, ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.error("Unable to clean up listening UNIX socket %r: %r", path, err)


def close_unix_server_socket(sock: socket.socket) -> None:
    """Close `sock` and remove its file, unless another server has replaced it since."""
    remove_unix_socket_file(sock)
    sock.close()


async def transport_sendfile(
    loop: AbstractEventLoop,
    transport: Any,
    file: Any,
    offset: int = 0,
    count: int | None = None,
    *,
    fallback: bool = True,
) -> int:
    """`loop.sendfile`: the kernel copies (`os.sendfile`) when the transport allows it.

    A muxio stream transport is flushed and held (writes refused, reading
    paused) while the kernel sends; any other transport, or a file the
    kernel cannot send from, gets chunks written through the transport with
    its flow control obeyed.
    """
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    mode = getattr(transport, "_sendfile_compatible", _SendfileMode.UNSUPPORTED)
    if mode is _SendfileMode.UNSUPPORTED:
        raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
    if mode is _SendfileMode.TRY_NATIVE:
        _check_sendfile_params(transport.get_extra_info("socket"), file, offset, count)
        try:
            sent: int = await loop._sendfile_native(  # type: ignore[attr-defined]
                transport, file, offset, count
            )
            return sent
        except asyncio.SendfileNotAvailableError:
            if not fallback:
                raise
    if not fallback:
        raise RuntimeError(
            f"fallback is disabled and native sendfile is not supported for transport {transport!r}"
        )
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    return await _transport_sendfile_fallback(loop, transport, file, offset, count)


class _FlowWatcher(asyncio.Protocol):
    """Stands in for the protocol while chunks are written: knows when to wait."""

    def __init__(self, loop: AbstractEventLoop, transport: Any) -> None:
        self.transport = transport
        self.protocol = transport.get_protocol()
        self.resume_reading = transport.is_reading()
        self.was_paused = bool(getattr(transport, "_protocol_paused", False))
        self.paused = self.was_paused
        self.ready: asyncio.Future[None] | None = None
        self.loop = loop
        transport.pause_reading()
        transport.set_protocol(self)

    async def drain(self) -> None:
        if self.transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self.paused:
            self.ready = self.loop.create_future()
            await self.ready

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("Connection is closed by peer"))
        if self.protocol is not None:
            self.protocol.connection_lost(exc)

    def restore(self) -> None:
        self.transport.set_protocol(self.protocol)
        if self.resume_reading and not self.transport.is_closing():
            self.transport.resume_reading()
        if self.was_paused and not self.paused and self.protocol is not None:
            self.protocol.resume_writing()


async def _transport_sendfile_fallback(
    loop: AbstractEventLoop, transport: Any, file: Any, offset: int, count: int | None
) -> int:
    if offset:
        file.seek(offset)
    blocksize = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
    watcher = _FlowWatcher(loop, transport)
    total = 0
    try:
        while True:
            want = min(count - total, blocksize) if count else blocksize
            if want <= 0:
                return total
            data = await loop.run_in_executor(None, file.read, want)
            if not data:
                return total
            await watcher.drain()
            transport.write(data)
            total += len(data)
    finally:
        if total:
            file.seek(offset + total)
        watcher.restore()
