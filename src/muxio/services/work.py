"""A line service with CPU-heavy requests: what `muxio.offload` is for.

Every line is answered with the line uppercased, except ``work <ms>``, which
first burns ``<ms>`` milliseconds of CPU (0 to 10000) and is answered
``WORK <ms>``.  ``--offload`` chooses where that work runs: ``processes``
(the default) keeps the loop free, ``threads`` shares the GIL with it, and
``none`` runs it on the loop, stalling every other connection meanwhile.

Replies keep request order even when work finishes out of order.  A
connection may have `max_pending` requests waiting; past that it is not
read until the work drains, so a client cannot queue unbounded work.  A line
longer than `max_line` bytes gets an error reply and the connection is
closed: the buffer never holds more than one line plus one read.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from functools import partial
from typing import Any

from ..loop import EventLoop
from ..offload import MODES, Job, Mode, Offloader, OrderedReplies, Outcome, ReplySlot
from ..protocol import Protocol
from ..transports.stream import Transport

MAX_LINE = 64 * 1024
MAX_WORK_MS = 10_000
MAX_PENDING = 64
LINGER = 2.0
"""After rejecting a line, how long to discard the peer's input before aborting."""

_NUMBER = re.compile(rb"[0-9]{1,9}")


def burn_cpu(ms: int) -> int:
    """Keep one CPU busy for `ms` milliseconds of wall time; module-level so it pickles."""
    deadline = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < deadline:
        for i in range(500):
            x += i * i
    return ms


class WorkService(Protocol):
    """One connection of the ``work`` service."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_jobs",
        "_linger",
        "_rejected",
        "_scanned",
        "_stalled",
        "_write_paused",
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
    ) -> None:
        self.offloader = offloader
        self.max_line = max_line
        self.max_pending = max_pending
        self._buffer = bytearray()
        self._scanned = 0
        self._jobs: dict[ReplySlot, Job] = {}
        self._eof = False
        self._stalled = False
        self._write_paused = False
        self._rejected = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.replies = OrderedReplies(transport.write, self._replies_written)

    # -- input ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # discarding until the peer closes or the linger timer fires
        self._buffer += data
        self._process()

    def _process(self) -> None:
        """Answer every complete line, unless too much work is already waiting."""
        buf = self._buffer
        start = 0
        self._stalled = False
        while True:
            if len(self.replies) >= self.max_pending:
                self._stalled = True
                break
            # nothing before self._scanned holds a newline: do not search it twice
            end = buf.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            if end - start > self.max_line:
                self._reject()
                return
            line = bytes(buf[start:end])
            start = end + 1
            self._on_line(line[:-1] if line.endswith(b"\r") else line)
        del buf[:start]
        if self._stalled:
            self._scanned = 0
        else:
            self._scanned = len(buf)
            if len(buf) > self.max_line:
                self._reject()
                return
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
        ms = int(arg)
        slot = self.replies.reserve()
        self._jobs[slot] = self.offloader.submit(
            burn_cpu, ms, callback=partial(self._work_done, slot, ms)
        )

    def _work_done(self, slot: ReplySlot, ms: int, outcome: Outcome[int]) -> None:
        self._jobs.pop(slot, None)
        if outcome.error is not None:
            err = outcome.error
            slot.fill(f"ERROR work {ms} failed: {type(err).__name__}: {err}\n".encode())
        else:
            slot.fill(f"WORK {outcome.value}\n".encode())

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
        if self.replies or self._stalled:
            return True  # answer what was asked first (see _replies_written)
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        for job in self._jobs.values():
            job.cancel()
        self._jobs.clear()
        self.replies.clear()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None


class WorkServiceFactory:
    """Builds `WorkService` protocols sharing one `Offloader`.

    `on_start(loop)` and `on_close()` are the runner's lifecycle hooks: the
    pool starts (pre-warmed) before the server listens and shuts down after
    the loop has stopped.
    """

    def __init__(
        self,
        offloader: Offloader,
        *,
        max_line: int = MAX_LINE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.offloader = offloader
        self.max_line = max_line
        self.max_pending = max_pending

    def __call__(self) -> WorkService:
        return WorkService(self.offloader, max_line=self.max_line, max_pending=self.max_pending)

    def on_start(self, loop: EventLoop) -> None:
        self.offloader.start(loop)

    def on_close(self) -> None:
        self.offloader.close()


def build(options: argparse.Namespace | Any) -> WorkServiceFactory:
    """The ``work`` service from `muxio serve`'s options (``--offload``, ``--pool-size``)."""
    mode: Mode = getattr(options, "offload", None) or "processes"
    if mode not in MODES:
        raise ValueError(f"unknown offload mode {mode!r}")
    offloader = Offloader(
        mode,
        max_workers=getattr(options, "pool_size", None),
        preload=(__name__,),
    )
    return WorkServiceFactory(offloader)
