"""A line service with CPU-heavy requests: what `muxio.offload` is for.

Every line is answered with the line uppercased, except ``work <ms>``, which
first burns ``<ms>`` milliseconds of CPU (0 to 10000) and is answered
``WORK <ms>``.  ``--offload`` chooses where that work runs: ``processes``
(the default) keeps the loop free, ``threads`` shares the GIL with it, and
``none`` runs it on the loop, stalling every other connection meanwhile.

Replies keep request order even when work finishes out of order.  A
connection is not read while it has `max_pending` requests unanswered or
more than the transport's high-water mark of replies waiting (computed but
queued behind slower ones, or not yet taken by a peer that does not read):
what a client can make the server hold is bounded in requests and in bytes.
A line longer than `max_line` bytes (not counting its LF or CRLF) gets an
error reply and the connection is closed; a last line without a newline
before EOF is answered like any other.

Fairness: a connection has at most `max_jobs` ``work`` requests in the pool
at once; the rest wait in that connection, and the pool takes jobs first
come, first served.  With the default of one, busy connections take turns:
one client's pipelined work cannot hold every worker.

A client that is gone must not cost work.  Its queued requests are dropped
when the connection is lost, and a connection that is not being read (the
loop does not watch it) is checked every `PEER_CHECK` seconds and before
each job starts, so a reset is noticed.  A peer that only half-closed may
still read its answers, so it gets them; one that closed entirely is
noticed at the first reply written to it, which its kernel answers with a
reset, so it costs at most the `max_jobs` already started.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import select
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from ..offload import MODES, Job, Mode, Offloader, OrderedReplies, Outcome, ReplySlot
from ..protocol import Protocol
from ..transports.stream import Transport
from .base import Service

MAX_LINE = 64 * 1024
MAX_WORK_MS = 10_000
MAX_PENDING = 64
MAX_JOBS = 1
"""Default `work` requests per connection in the pool at once."""
LINGER = 2.0
"""After rejecting a line, how long to discard the peer's input before aborting."""
PEER_CHECK = 1.0
"""How often a connection with work but no reader checks that its peer is still there."""

_NUMBER = re.compile(rb"[0-9]{1,9}")
_GONE = getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)


def burn_cpu(ms: int) -> int:
    """Keep one CPU busy for `ms` milliseconds of wall time; module-level so it pickles."""
    deadline = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < deadline:
        for i in range(500):
            x += i * i
    return ms


def peer_gone(sock: socket.socket) -> bool:
    """True once the peer reset the connection (or it failed), without reading from it."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return True
        if not _GONE or not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(sock.fileno(), _GONE)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class WorkService(Protocol):
    """One connection of the ``work`` service."""

    __slots__ = (
        "_buffer",
        "_check",
        "_eof",
        "_jobs",
        "_linger",
        "_rejected",
        "_scanned",
        "_stalled",
        "_waiting",
        "_write_paused",
        "max_jobs",
        "max_line",
        "max_pending",
        "offloader",
        "replies",
        "transport",
    )

    def __init__(
        self,
        offloader: Offloader,
        *,
        max_line: int = MAX_LINE,
        max_pending: int = MAX_PENDING,
        max_jobs: int = MAX_JOBS,
    ) -> None:
        self.offloader = offloader
        self.max_line = max_line
        self.max_pending = max_pending
        self.max_jobs = max_jobs
        self._buffer = bytearray()
        self._scanned = 0
        self._jobs: dict[ReplySlot, Job] = {}
        self._waiting: deque[tuple[ReplySlot, int]] = deque()
        self._eof = False
        self._stalled = False
        self._write_paused = False
        self._rejected = False
        self._linger: asyncio.TimerHandle | None = None
        self._check: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.replies = OrderedReplies(transport.write, self._replies_written)

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # discarding until the peer closes or the linger timer fires
        self._buffer += data
        self._process()

    def _held(self) -> bool:
        """Too much unanswered: stop taking requests until replies drain."""
        if len(self.replies) >= self.max_pending:
            return True
        waiting = self.replies.queued_bytes + self.transport.get_write_buffer_size()
        return waiting > self.transport.get_write_buffer_limits()[1]

    def _process(self) -> None:
        """Answer every complete line, unless too much is already waiting."""
        buf = self._buffer
        start = 0
        self._stalled = False
        while True:
            if self._held():
                self._stalled = True
                break
            # nothing before self._scanned holds a newline: do not search it twice
            end = buf.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            stop = end - 1 if end > start and buf[end - 1] == 13 else end
            if stop - start > self.max_line:
                self._reject()
                return
            line = bytes(buf[start:stop])
            start = end + 1
            self._on_line(line)
        del buf[:start]
        if self._stalled:
            self._scanned = 0
        else:
            self._scanned = len(buf)
            if len(buf) - buf.endswith(b"\r") > self.max_line:
                self._reject()
                return
            if self._eof and buf:
                # the last line had no newline: it is a request all the same
                line = bytes(buf[:-1] if buf.endswith(b"\r") else buf)
                buf.clear()
                self._scanned = 0
                self._on_line(line)
        self._update_reading()

    def _on_line(self, line: bytes) -> None:
        parts = line.split(None, 1)
        if not parts or parts[0] != b"work":
            self.replies.reply(line.upper() + b"\n")
            return
        arg = parts[1].strip() if len(parts) > 1 else b""
        if not _NUMBER.fullmatch(arg) or int(arg) > MAX_WORK_MS:
            shown = arg[:40].decode("ascii", "replace")
            self.replies.reply(
                f"ERROR work takes a whole number of milliseconds from 0 to {MAX_WORK_MS}, "
                f"not {shown!r}\n".encode()
            )
            return
        self._waiting.append((self.replies.reserve(), int(arg)))
        self._start_jobs()

    # -- work ----------------------------------------------------------------

    def _start_jobs(self) -> None:
        """Hand waiting work to the pool, up to `max_jobs`, if the peer is still there."""
        if not self._waiting or len(self._jobs) >= self.max_jobs:
            return
        if self.transport.is_closing():
            return
        if peer_gone(self.transport.get_extra_info("socket")):
            self.transport.abort()
            return
        while self._waiting and len(self._jobs) < self.max_jobs:
            slot, ms = self._waiting.popleft()
            self._jobs[slot] = self.offloader.submit(
                burn_cpu, ms, callback=partial(self._work_done, slot, ms)
            )
        self._watch_peer()

    def _watch_peer(self) -> None:
        """While work is out and nobody reads the socket, look for a reset now and then."""
        if self._check is not None or not (self._jobs or self._waiting):
            return
        loop = self.offloader.loop
        if loop is not None:
            self._check = loop.call_later(PEER_CHECK, self._check_peer)

    def _check_peer(self) -> None:
        self._check = None
        if self.transport.is_closing():
            return
        if not self.transport.is_reading() and peer_gone(self.transport.get_extra_info("socket")):
            self.transport.abort()
            return
        self._watch_peer()

    def _work_done(self, slot: ReplySlot, ms: int, outcome: Outcome[int]) -> None:
        self._jobs.pop(slot, None)
        if outcome.error is not None:
            err = outcome.error
            slot.fill(f"ERROR work {ms} failed: {type(err).__name__}: {err}\n".encode())
        else:
            slot.fill(f"WORK {outcome.value}\n".encode())
        self._start_jobs()

    # -- flow control --------------------------------------------------------

    def _replies_written(self) -> None:
        """Replies left the queue: finish a rejection, read again, or close after EOF."""
        if self._rejected:
            if not self.replies:
                self._goodbye()
            return
        if self._stalled and len(self.replies) <= self.max_pending // 2:
            self._process()
        if self._eof and not self.replies and not self._stalled:
            self.transport.close()

    def _update_reading(self) -> None:
        if self._stalled or self._write_paused or self._rejected:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stalled and not self._rejected:
            self._process()
        else:
            self._update_reading()

    def is_busy(self) -> bool:
        """Work in flight or lines read but not yet answered: a drain waits for them."""
        return bool(self.replies) or self._stalled

    # -- rejecting an over-long line ------------------------------------------

    def _reject(self) -> None:
        """Answer (after every earlier reply) with an error, then close."""
        self._rejected = True
        self._stalled = False
        self._buffer = bytearray()
        self.transport.pause_reading()
        self.replies.reply(f"ERROR line longer than {self.max_line} bytes\n".encode())
        if not self.replies:
            self._goodbye()

    def _goodbye(self) -> None:
        """Half-close after the error reply; discard input until the peer closes.

        Closing outright with unread input in the kernel would send a RST,
        which can destroy the error reply before the peer reads it.
        """
        if self._linger is not None or self.transport.is_closing():
            return
        if self._eof:
            self.transport.close()
            return
        self.transport.write_eof()
        self.transport.resume_reading()
        loop = self.offloader.loop
        if loop is not None:
            self._linger = loop.call_later(LINGER, self.transport.abort)

    # -- end -----------------------------------------------------------------

    def eof_received(self) -> bool | None:
        self._eof = True
        if not self._rejected and not self._stalled:
            self._process()  # a last line without a newline
        if self.replies or self._stalled:
            return True  # answer what was asked first (see _replies_written)
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        for job in self._jobs.values():
            job.cancel()
        self._jobs.clear()
        self._waiting.clear()
        self.replies.clear()
        for timer in (self._linger, self._check):
            if timer is not None:
                timer.cancel()
        self._linger = self._check = None


class WorkServiceFactory:
    """Builds `WorkService` protocols sharing one `Offloader`."""

    def __init__(
        self,
        offloader: Offloader,
        *,
        max_line: int = MAX_LINE,
        max_pending: int = MAX_PENDING,
        max_jobs: int = MAX_JOBS,
    ) -> None:
        self.offloader = offloader
        self.max_line = max_line
        self.max_pending = max_pending
        self.max_jobs = max_jobs

    def __call__(self) -> WorkService:
        return WorkService(
            self.offloader,
            max_line=self.max_line,
            max_pending=self.max_pending,
            max_jobs=self.max_jobs,
        )


def build(options: argparse.Namespace | Any) -> Service:
    """The ``work`` service from `muxio serve`'s options (``offload``, ``pool_size``).

    The pool starts (pre-warmed) before the server listens; at shutdown its
    running jobs get what is left of the shutdown timeout, then are abandoned.
    """
    mode: Mode = getattr(options, "offload", None) or "processes"
    if mode not in MODES:
        raise ValueError(f"unknown offload mode {mode!r}")
    offloader = Offloader(
        mode,
        max_workers=getattr(options, "pool_size", None),
        preload=(__name__,),
    )
    max_jobs = getattr(options, "max_jobs_per_connection", None) or MAX_JOBS
    return Service(
        WorkServiceFactory(offloader, max_jobs=max_jobs),
        on_start=offloader.start,
        on_close=offloader.close,
    )
