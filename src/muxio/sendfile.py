"""The kernel-copy and fallback paths of `loop.sock_sendfile` and `loop.sendfile`.

Both have a fallback for files or transports the kernel cannot send from:
chunks read in the executor (a disk read may block) and written out with
the socket's or the transport's own flow control obeyed.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
import sys
from asyncio import AbstractEventLoop
from asyncio import constants as _aio_constants
from typing import Any

from .readiness import Waiter

FALLBACK_BLOCK = 256 * 1024
"""Bytes per read in either fallback, as asyncio's."""

_SendfileMode: Any = _aio_constants._SendfileMode  # asyncio's marker on transports


def check_sendfile_params(sock: socket.socket, file: Any, offset: object, count: object) -> None:
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


async def sock_sendfile_native(
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
        with Waiter(loop, sock, True) as waiter:
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


async def sock_sendfile_fallback(
    loop: AbstractEventLoop, sock: socket.socket, file: Any, offset: int, count: int | None
) -> int:
    if offset:
        file.seek(offset)
    blocksize = min(count, FALLBACK_BLOCK) if count else FALLBACK_BLOCK
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
            await loop.sock_sendall(sock, view[:read])
            total += read
        return total
    finally:
        if total > 0 and hasattr(file, "seek"):
            file.seek(offset + total)


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
        check_sendfile_params(transport.get_extra_info("socket"), file, offset, count)
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
    blocksize = min(count, FALLBACK_BLOCK) if count else FALLBACK_BLOCK
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
