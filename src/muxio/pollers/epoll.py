"""Linux epoll: O(ready) per wait, the kernel keeps the interest set."""

from __future__ import annotations

import errno
import select

from .base import GONE, READ, WRITE, Poller

_IN = getattr(select, "EPOLLIN", 0)
_OUT = getattr(select, "EPOLLOUT", 0)
_HUP = getattr(select, "EPOLLHUP", 0)
_ERR = getattr(select, "EPOLLERR", 0)
_MASKS = (0, _IN, _OUT, _IN | _OUT)
_GONE = GONE | {errno.EPERM}


class EpollPoller(Poller):
    """Level-triggered epoll, so a handler that stops early is woken again.

    The kernel drops a descriptor from the set when its last reference is
    closed, which is why `unregister` forgives what that leaves behind.
    """

    name = "epoll"
    READABLE = _IN | _HUP | _ERR
    WRITABLE = _OUT | _HUP | _ERR

    @classmethod
    def available(cls) -> bool:
        return hasattr(select, "epoll")

    def __init__(self) -> None:
        self._ep = select.epoll()

    def register(self, fd: int, events: int) -> None:
        self._ep.register(fd, _MASKS[events & (READ | WRITE)])

    def modify(self, fd: int, events: int) -> None:
        self._ep.modify(fd, _MASKS[events & (READ | WRITE)])

    def unregister(self, fd: int) -> None:
        """Quiet only when the kernel has already forgotten `fd`, or the poller is closed.

        By the time an owner lets go, its descriptor may be closed (EBADF),
        or closed and its number reused by something not in the set: a
        socket or pipe (ENOENT) or a regular file, which epoll refuses to
        look at at all (EPERM).  After `close()` `select.epoll` raises
        ValueError; every other poller forgets its set on close, so this one
        is quiet too.  Anything else (EINVAL for the epoll's own descriptor,
        ValueError for a negative one) is the caller's bug and propagates.
        """
        try:
            self._ep.unregister(fd)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
        except ValueError:
            if not self._ep.closed:
                raise

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is None:
            return self._ep.poll(-1)
        return self._ep.poll(timeout if timeout > 0 else 0)

    def close(self) -> None:
        self._ep.close()

    def fileno(self) -> int:
        return self._ep.fileno()
