"""BSD/macOS kqueue: one kernel filter per direction, so pairs are built here."""

from __future__ import annotations

import select
from typing import TYPE_CHECKING

from .base import GONE, READ, WRITE, Poller

if TYPE_CHECKING:
    from typing import Any

_ERROR = 4


class KqueuePoller(Poller):
    """kqueue reports read and write as separate events; both are passed on as-is.

    EV_EOF and EV_ERROR set an extra bit that belongs to both READABLE and
    WRITABLE, the counterpart of epoll's EPOLLHUP / EPOLLERR.
    """

    name = "kqueue"
    READABLE = READ | _ERROR
    WRITABLE = WRITE | _ERROR

    @classmethod
    def available(cls) -> bool:
        return hasattr(select, "kqueue")

    def __init__(self) -> None:
        s: Any = select
        self._s = s
        self._kq = s.kqueue()
        self._fds: dict[int, int] = {}
        self._filters = 0

    def _control(self, fd: int, events: int, flag: int) -> None:
        s = self._s
        changes = []
        if events & READ:
            changes.append(s.kevent(fd, s.KQ_FILTER_READ, flag))
        if events & WRITE:
            changes.append(s.kevent(fd, s.KQ_FILTER_WRITE, flag))
        if changes:
            self._kq.control(changes, 0, 0)

    def register(self, fd: int, events: int) -> None:
        if fd in self._fds:
            raise FileExistsError(f"fd {fd} is already registered")
        events &= READ | WRITE
        self._control(fd, events, self._s.KQ_EV_ADD)
        self._fds[fd] = events
        self._filters += bin(events).count("1")

    def modify(self, fd: int, events: int) -> None:
        old = self._fds.get(fd)
        if old is None:
            raise FileNotFoundError(f"fd {fd} is not registered")
        events &= READ | WRITE
        self._control(fd, old & ~events, self._s.KQ_EV_DELETE)
        self._control(fd, events & ~old, self._s.KQ_EV_ADD)
        self._fds[fd] = events
        self._filters += bin(events).count("1") - bin(old).count("1")

    def unregister(self, fd: int) -> None:
        """Quiet when the kernel has already dropped `fd`'s filters (see `base.GONE`).

        Closing a descriptor deletes its filters, so EV_DELETE on it fails
        with EBADF, or ENOENT once its number is reused; anything else
        propagates.
        """
        old = self._fds.pop(fd, None)
        if old is None:
            return
        self._filters -= bin(old).count("1")
        try:
            self._control(fd, old, self._s.KQ_EV_DELETE)
        except OSError as exc:
            if exc.errno not in GONE:
                raise

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        s = self._s
        if timeout is not None and timeout < 0:
            timeout = 0
        kevents = self._kq.control(None, max(self._filters, 1), timeout)
        ready = []
        flag_err = s.KQ_EV_EOF | s.KQ_EV_ERROR
        for kev in kevents:
            bits = READ if kev.filter == s.KQ_FILTER_READ else WRITE
            if kev.flags & flag_err:
                bits |= _ERROR
            ready.append((kev.ident, bits))
        return ready

    def close(self) -> None:
        self._fds.clear()
        self._kq.close()

    def fileno(self) -> int:
        return int(self._kq.fileno())
