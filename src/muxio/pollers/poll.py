"""POSIX poll(2): no descriptor limit, but the whole set crosses into the kernel per wait."""

from __future__ import annotations

import math
import select

from .base import READ, WRITE, ClosedPoll, Poller

_IN = getattr(select, "POLLIN", 0)
_PRI = getattr(select, "POLLPRI", 0)
_OUT = getattr(select, "POLLOUT", 0)
_HUP = getattr(select, "POLLHUP", 0)
_ERR = getattr(select, "POLLERR", 0)
_NVAL = getattr(select, "POLLNVAL", 0)
MASKS = (0, _IN, _OUT, _IN | _OUT)
"""poll(2)'s interest bits for READ, WRITE and both, indexed by those bits."""


def timeout_ms(timeout: float | None) -> int:
    """Round up, so a wait for a timer never returns a hair early and spins."""
    if timeout is None:
        return -1
    if timeout <= 0:
        return 0
    return math.ceil(timeout * 1000)


class PollPoller(Poller):
    """poll(2), reporting a descriptor closed while registered (POLLNVAL) as ready."""

    name = "poll"
    READABLE = _IN | _PRI | _HUP | _ERR | _NVAL
    WRITABLE = _OUT | _HUP | _ERR | _NVAL

    @classmethod
    def available(cls) -> bool:
        return hasattr(select, "poll")

    def __init__(self) -> None:
        self._p: select.poll | ClosedPoll = select.poll()
        self._fds: set[int] = set()

    def register(self, fd: int, events: int) -> None:
        if fd in self._fds:
            raise FileExistsError(f"fd {fd} is already registered")
        self._p.register(fd, MASKS[events & (READ | WRITE)])
        self._fds.add(fd)

    def modify(self, fd: int, events: int) -> None:
        if fd not in self._fds:
            raise FileNotFoundError(f"fd {fd} is not registered")
        self._p.modify(fd, MASKS[events & (READ | WRITE)])

    def unregister(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            self._p.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._p.poll(timeout_ms(timeout))

    def close(self) -> None:
        """`select.poll` has no close: drop it, so use after close fails as epoll's does."""
        self._fds.clear()
        self._p = ClosedPoll()
