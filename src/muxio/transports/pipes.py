"""Pipe transports: one direction each, over pipes, FIFOs, sockets and ttys.

The contract is asyncio's Unix pipe transports (what `connect_read_pipe` and
`connect_write_pipe` return), built on the public loop API only so they run
on any `asyncio.AbstractEventLoop`, muxio's included.  The house rules hold as
in the stream transport: `write()` writes at once and buffers only what the
kernel did not take, the loop watches for writability only while that buffer
is non-empty, and each readiness event gets exactly one `read()`.

A write pipe learns that its reader went away without writing: on Linux and
the BSDs the write end of a pipe or socket polls readable (EPOLLERR, EV_EOF)
once the other end is closed, so the transport watches it for reading and
reports `connection_lost` even while idle.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import warnings
from asyncio import BaseProtocol, ReadTransport, WriteTransport
from typing import TYPE_CHECKING

from .base import FlowControlTransport, TransportBase

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop, Future
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    _P = TypeVar("_P", bound=BaseProtocol)
    _T = TypeVar("_T", "ReadPipeTransport", "WritePipeTransport")


log = logging.getLogger("muxio")

_HAS_WRITEV = hasattr(os, "writev")
_IOV_MAX = 64
_PEER_CLOSE_SIGNALLED = not sys.platform.startswith("aix")  # AIX: only for sockets


def _wake(waiter: Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _warn_unclosed(transport: object) -> None:
    message = f"unclosed transport {transport!r}"
    warnings.warn(message, ResourceWarning, stacklevel=2, source=transport)


def _with_pipe(extra: Mapping[str, Any] | None, pipe: Any) -> dict[str, Any]:
    info = dict(extra) if extra is not None else {}
    info["pipe"] = pipe
    return info


class _PipeEnd(TransportBase):
    """What both ends add to the common base: the descriptor check and the pipe itself."""

    __slots__ = ()  # the ends have a __dict__; slots here would clash with the write end's

    _pipe: Any
    _not_a_pipe: str
    """The ValueError's message for a descriptor that is no pipe, socket or tty (asyncio's)."""

    def __init__(
        self,
        loop: AbstractEventLoop,
        pipe: Any,
        protocol: BaseProtocol,
        waiter: Future[None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Take `pipe` over, non-blocking; the protocol hears of it on the next loop turn.

        `connection_made` is scheduled, not run, so that the caller of the
        constructor finishes first; `waiter` is woken after it.
        """
        self._pipe = None  # set first: __del__ runs even if we raise below
        self._extra = _with_pipe(extra, pipe)
        fd = pipe.fileno()
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError(self._not_a_pipe)
        os.set_blocking(fd, False)
        self._init_base(loop, fd, protocol)
        self._pipe = pipe
        then = self._setup(mode)
        loop.call_soon(protocol.connection_made, self)
        if then is not None:
            loop.call_soon(then)
        if waiter is not None:
            loop.call_soon(_wake, waiter)

    def _setup(self, mode: int) -> Callable[[], object] | None:
        """This end's own state; what to run once `connection_made` has."""
        raise NotImplementedError

    def _release(self) -> None:
        self._pipe.close()
        self._pipe = None

    def _state_when_open(self) -> str:
        return "open"

    def __repr__(self) -> str:
        if self._pipe is None:
            state = "closed"
        elif self._closing:
            state = "closing"
        else:
            state = self._state_when_open()
        return f"<{type(self).__name__} fd={getattr(self, '_fd', None)} {state}>"

    def __del__(self) -> None:
        if self._pipe is not None:
            _warn_unclosed(self)
            self._pipe.close()


class ReadPipeTransport(_PipeEnd, ReadTransport):
    """The reading end of a pipe, FIFO, socket or tty.

    `connection_made` and the first read are scheduled, not run, so that the
    caller of the constructor finishes first and a protocol that pauses in
    `connection_made` is never read from (Python 3.11's behaviour; 3.10 read
    regardless).  End of file always closes: `eof_received`'s return value is
    ignored, as a pipe has no write half to keep open.
    """

    max_size = 256 * 1024
    """Largest single read: four default Linux pipe buffers."""
    _not_a_pipe = "Pipe transport is for pipes/sockets only."

    def _setup(self, mode: int) -> Callable[[], object] | None:
        self._paused = False
        return self._start_reading

    def _start_reading(self) -> None:
        if self.is_reading():
            self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, self.max_size)
        except OSError as exc:
            if not isinstance(exc, (BlockingIOError, InterruptedError)):
                self._fatal_error(exc, "Fatal read error on pipe transport")
            return
        if not data:
            if self._loop.get_debug():
                log.info("%r was closed by peer", self)
            self._closing = True
            self._loop.call_soon(self._protocol.eof_received)
            self._lose(None)
            return
        # Fatal if it raises, as in asyncio's socket transports: a protocol
        # that cannot take the data would lose the rest of the stream too.
        self._call_protocol("data_received", data)

    def is_reading(self) -> bool:
        return not (self._paused or self._closing)

    def pause_reading(self) -> None:
        """Leave the poller, so unread bytes fill the pipe and block the writer."""
        if not self.is_reading():
            return
        self._paused = True
        self._loop.remove_reader(self._fd)
        if self._loop.get_debug():
            log.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.add_reader(self._fd, self._read_ready)
        if self._loop.get_debug():
            log.debug("%r resumes reading", self)

    def close(self) -> None:
        if not self._closing:
            self._force_close(None)

    def _is_quiet(self, exc: BaseException) -> bool:
        """Only EIO, as in asyncio's read pipe: how a pty master learns its slave closed."""
        return isinstance(exc, OSError) and exc.errno == errno.EIO

    def _unwatch(self, exc: BaseException | None) -> None:
        self._loop.remove_reader(self._fd)

    def _state_when_open(self) -> str:
        return "open reading" if self.is_reading() else "open paused"


class WritePipeTransport(_PipeEnd, FlowControlTransport, WriteTransport):
    """The writing end of a pipe, FIFO, socket or tty, with flow control.

    The protocol is paused once more than the high-water mark is buffered and
    resumed at the low-water mark, so a reader that stops reading costs the
    writer at most `high + one write` bytes of memory.  For a pipe, closing
    and `write_eof()` are the same thing: the descriptor is closed once the
    buffer is flushed.
    """

    _not_a_pipe = "Pipe transport is only for pipes, sockets and character devices"

    def _setup(self, mode: int) -> Callable[[], object] | None:
        self._buffer: list[bytes | memoryview] = []
        self._init_flow_control()
        if stat.S_ISSOCK(mode) or (stat.S_ISFIFO(mode) and _PEER_CLOSE_SIGNALLED):
            return self._watch_reader
        return None

    def _watch_reader(self) -> None:
        if not self._lost:
            self._loop.add_reader(self._fd, self._reader_gone)

    def _reader_gone(self) -> None:
        """The write end polled readable: the other end was closed.

        Bytes still buffered can never be delivered, hence BrokenPipeError;
        with nothing pending the pipe simply ended, as in asyncio.
        """
        if self._loop.get_debug():
            log.info("%r was closed by peer", self)
        self._force_close(BrokenPipeError() if self._buffer else None)

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write now what the kernel takes; buffer the rest.

        Writing after the pipe was closed or lost is silently dropped (with a
        warning after a few attempts), as in asyncio: the caller learns of
        the loss from `connection_lost`.
        """
        owned = isinstance(data, bytes)  # immutable: safe to keep without a copy
        if not owned:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            data = memoryview(data).cast("B")
        if not data:
            return
        if self._closing or self._lost:
            self._drop_write("pipe closed by peer or os.write(pipe, data) raised exception.")
            return
        if not self._buffer:
            try:
                n = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._write_failed(exc)
                return
            if n == len(data):
                return
            self._loop.add_writer(self._fd, self._write_ready)
            if n:
                data = memoryview(data)[n:]
        # A caller may reuse its bytearray once write() returns: keep a copy.
        rest = bytes(data) if not owned or isinstance(data, bytearray) else data
        self._buffer.append(rest)
        self._buffered += len(rest)
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        buf = self._buffer
        try:
            if len(buf) > 1 and _HAS_WRITEV:
                n = os.writev(self._fd, buf[:_IOV_MAX])
            elif buf:
                n = os.write(self._fd, buf[0])
            else:  # an event polled before the buffer was dropped
                self._loop.remove_writer(self._fd)
                return
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._write_failed(exc)
            return
        self._buffered -= n
        done = 0
        for chunk in buf:
            if len(chunk) > n:
                break
            n -= len(chunk)
            done += 1
        del buf[:done]
        if n:
            buf[0] = memoryview(buf[0])[n:]
        if buf:
            self._maybe_resume_protocol()
            return
        self._loop.remove_writer(self._fd)
        self._maybe_resume_protocol()  # may write again, never when closing
        if self._closing:
            self._lose(None)

    def _write_failed(self, exc: BaseException) -> None:
        """Fatal, and it counts as a write after the loss (asyncio's count)."""
        self._writes_after_loss += 1
        self._fatal_error(exc, "Fatal write error on pipe transport")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Close the pipe once the buffer is flushed: its reader then sees EOF."""
        if self._closing:
            return
        self._closing = True
        if not self._buffer:
            self._lose(None)

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Flush what is buffered, then close: nothing accepted is dropped."""
        if self._pipe is not None and not self._closing:
            self.write_eof()

    def abort(self) -> None:
        """Close now, dropping whatever is still buffered."""
        self._force_close(None)

    def _unwatch(self, exc: BaseException | None) -> None:
        self._loop.remove_writer(self._fd)
        self._loop.remove_reader(self._fd)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} bufsize={getattr(self, '_buffered', 0)}>"


async def connect_read_pipe(
    loop: AbstractEventLoop, protocol_factory: Callable[[], _P], pipe: Any
) -> tuple[ReadPipeTransport, _P]:
    """`loop.connect_read_pipe` for any loop: returns once `connection_made` has run."""
    return await _connect(loop, ReadPipeTransport, protocol_factory, pipe, "read")


async def connect_write_pipe(
    loop: AbstractEventLoop, protocol_factory: Callable[[], _P], pipe: Any
) -> tuple[WritePipeTransport, _P]:
    """`loop.connect_write_pipe` for any loop: returns once `connection_made` has run."""
    return await _connect(loop, WritePipeTransport, protocol_factory, pipe, "write")


async def _connect(
    loop: AbstractEventLoop,
    transport_class: type[_T],
    protocol_factory: Callable[[], _P],
    pipe: Any,
    direction: str,
) -> tuple[_T, _P]:
    protocol = protocol_factory()
    waiter: Future[None] = loop.create_future()
    transport = transport_class(loop, pipe, protocol, waiter)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
    if loop.get_debug():
        log.debug("%s pipe %r connected: (%r, %r)", direction, pipe.fileno(), transport, protocol)
    return transport, protocol
