"""select(2): everywhere, but O(n) per wait and blind to descriptors >= FD_SETSIZE."""

from __future__ import annotations

import errno
import os
import select as _select
from collections.abc import Callable

from .base import READ, WRITE, ClosedPoll, FdTooLargeError, Poller

FD_SETSIZE = 1024
_ERROR = 4


class SelectPoller(Poller):
    """The tutorial's interface, made safe.

    `register` refuses descriptors the kernel's fd_set cannot hold instead of
    letting `select()` fail for every connection at once.  A descriptor closed
    while registered makes `select()` fail with EBADF; it is then found and
    reported ready with the error bit, like poll's POLLNVAL, until its owner
    unregisters it.
    """

    name = "select"
    READABLE = READ | _ERROR
    WRITABLE = WRITE | _ERROR
    max_fd = FD_SETSIZE

    def __init__(self) -> None:
        # swapped for one that refuses on close: no flag to check per wait
        self._select: Callable[..., tuple[list[int], list[int], list[int]]] = _select.select
        self._fds: dict[int, int] = {}
        self._r: set[int] = set()
        self._w: set[int] = set()

    def register(self, fd: int, events: int) -> None:
        if self._select is _refuse:
            raise ClosedPoll.error()
        if fd in self._fds:
            raise FileExistsError(f"fd {fd} is already registered")
        if fd >= FD_SETSIZE:
            raise FdTooLargeError(
                f"select() cannot watch descriptor {fd} (FD_SETSIZE is {FD_SETSIZE})"
            )
        if fd < 0:
            raise ValueError(f"invalid descriptor {fd}")
        self._fds[fd] = 0
        self.modify(fd, events)

    def modify(self, fd: int, events: int) -> None:
        if fd not in self._fds:
            raise FileNotFoundError(f"fd {fd} is not registered")
        self._fds[fd] = events
        if events & READ:
            self._r.add(fd)
        else:
            self._r.discard(fd)
        if events & WRITE:
            self._w.add(fd)
        else:
            self._w.discard(fd)

    def unregister(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._r.discard(fd)
            self._w.discard(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is not None and timeout < 0:
            timeout = 0
        try:
            r, w, _ = self._select(self._r, self._w, (), timeout)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return self._closed_fds()
        ready: dict[int, int] = dict.fromkeys(r, READ)
        for fd in w:
            ready[fd] = ready.get(fd, 0) | WRITE
        return list(ready.items())

    def _closed_fds(self) -> list[tuple[int, int]]:
        bad = []
        for fd, events in self._fds.items():
            try:
                os.fstat(fd)
            except OSError:
                bad.append((fd, events | _ERROR))
        return bad

    def close(self) -> None:
        self._select = _refuse
        self._fds.clear()
        self._r.clear()
        self._w.clear()


def _refuse(*args: object) -> tuple[list[int], list[int], list[int]]:
    raise ClosedPoll.error()
