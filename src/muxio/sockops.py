"""The loop's socket coroutines (`sock_recv` … `sock_sendfile`, `getaddrinfo`).

`SocketOps` is a base class of `EventLoop`: the methods reach the loop only
through the public `AbstractEventLoop` API, so `loop.py` stays the core and
the same functions, called unbound with a stock loop as `self`, run (and are
tested) on asyncio's own loop too.

The contract is that of asyncio's selector loop on Python 3.10-3.13
(arguments, exceptions and their messages, version differences included);
how waiting differs is said in `muxio.readiness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

from . import sendfile as _sendfile
from .readiness import Waiter, check_socket, until_ready
from .resolve import HAS_IPV6, NUMERIC_SAFE_FLAGS, AddrInfo, ensure_resolved, numeric_info


class SocketOps(asyncio.AbstractEventLoop):
    """asyncio's `sock_*` and resolver methods, for any loop with the public API."""

    async def getaddrinfo(  # type: ignore[override]
        self,
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
        if not flags & ~NUMERIC_SAFE_FLAGS:
            info = numeric_info(host, port, family, type, proto)
            if info is not None:
                return [info]
        resolve = cast("Callable[..., list[AddrInfo]]", socket.getaddrinfo)
        return await self.run_in_executor(None, resolve, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        """`socket.getnameinfo` off the loop's thread: reverse lookups block too."""
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    async def sock_recv(self, sock: socket.socket, nbytes: int) -> bytes:
        """Receive up to `nbytes`; b"" at end of stream."""
        check_socket(self, sock)
        return await until_ready(self, sock, False, lambda: sock.recv(nbytes))

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive into the writable buffer `buf`; the count received, 0 at end of stream."""
        check_socket(self, sock)
        return await until_ready(self, sock, False, lambda: sock.recv_into(buf))

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive one datagram: (data, address)."""
        check_socket(self, sock)
        return await until_ready(self, sock, False, lambda: sock.recvfrom(bufsize))

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        """Receive one datagram into `buf`: (count, address)."""
        check_socket(self, sock)
        if not nbytes:
            nbytes = len(buf)
        return await until_ready(self, sock, False, lambda: sock.recvfrom_into(buf, nbytes))

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of `data`; on error there is no telling how much the peer got."""
        check_socket(self, sock)
        view = memoryview(data).cast("B")
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(view):
            return
        with Waiter(self, sock, True) as waiter:
            while sent < len(view):
                await waiter.wait()
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    sent += sock.send(view[sent:])

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send one datagram to `address`; the count sent."""
        check_socket(self, sock)
        return await until_ready(self, sock, True, lambda: sock.sendto(data, address))

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect, resolving a host name first for IP sockets as asyncio does."""
        check_socket(self, sock)
        if sock.family == socket.AF_INET or (HAS_IPV6 and sock.family == socket.AF_INET6):
            resolved = await ensure_resolved(
                self, address, family=sock.family, type=sock.type, proto=sock.proto
            )
            address = resolved[0][4]
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            pass
        else:
            return
        with Waiter(self, sock, True) as waiter:
            await waiter.wait()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f"Connect call failed {address}")

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept one connection: (non-blocking socket, peer address)."""
        check_socket(self, sock)

        def accept() -> tuple[socket.socket, Any]:
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        return await until_ready(self, sock, False, accept)

    async def sock_sendfile(  # type: ignore[override]
        self,
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
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        check_socket(self, sock)
        _sendfile.check_sendfile_params(sock, file, offset, count)
        try:
            return await _sendfile.sock_sendfile_native(self, sock, file, offset, count)
        except asyncio.SendfileNotAvailableError:
            if not fallback:
                raise
        return await _sendfile.sock_sendfile_fallback(self, sock, file, offset, count)
