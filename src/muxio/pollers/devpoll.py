"""Solaris/illumos /dev/poll: poll(2)'s interface with a kernel-held set."""

from __future__ import annotations

import select
from typing import TYPE_CHECKING

from .base import READ, WRITE, Poller
from .poll import MASKS, PollPoller, timeout_ms

if TYPE_CHECKING:
    from typing import Any


class DevpollPoller(Poller):
    """/dev/poll ORs a re-registration into the old mask, so modify removes first."""

    name = "devpoll"
    READABLE = PollPoller.READABLE  # the same poll(2) bits
    WRITABLE = PollPoller.WRITABLE

    @classmethod
    def available(cls) -> bool:
        return hasattr(select, "devpoll")

    def __init__(self) -> None:
        self._dp: Any = select.devpoll()  # type: ignore[attr-defined,unused-ignore]
        self._fds: set[int] = set()

    def register(self, fd: int, events: int) -> None:
        if fd in self._fds:
            raise FileExistsError(f"fd {fd} is already registered")
        self._dp.register(fd, MASKS[events & (READ | WRITE)])
        self._fds.add(fd)

    def modify(self, fd: int, events: int) -> None:
        if fd not in self._fds:
            raise FileNotFoundError(f"fd {fd} is not registered")
        self._dp.unregister(fd)
        self._dp.register(fd, MASKS[events & (READ | WRITE)])

    def unregister(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            self._dp.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        result: list[tuple[int, int]] = self._dp.poll(timeout_ms(timeout))
        return result

    def close(self) -> None:
        self._fds.clear()
        self._dp.close()

    def fileno(self) -> int:
        return int(self._dp.fileno())
