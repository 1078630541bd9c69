"""The one interface every poller implements.

Like Redis's `ae_*.c` backends, a poller is a thin layer over one kernel
interface. `poll()` returns the kernel's own `(fd, bits)` pairs without
rebuilding them, and each backend says once, in `READABLE` / `WRITABLE`,
which of its bits mean "a read (or write) call will not block".  Hang-up and
error bits are part of both masks, so a connection whose peer vanished is
handed to whichever handler is registered and learns the cause from its next
`recv`/`send` — the same observable behaviour on every backend, and no
per-event translation on the hot path.
"""

from __future__ import annotations

import abc
import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import ClassVar


READ = 1
"""Interest in readability, given to `register` / `modify`."""
WRITE = 2
"""Interest in writability, given to `register` / `modify`."""

GONE = frozenset({errno.EBADF, errno.ENOENT})
"""What a kernel says when asked to forget a descriptor it has already forgotten.

EBADF: the descriptor was closed (epoll and kqueue drop it from their set
when its last reference closes).  ENOENT: it is open but not in the set
(never registered, or closed and its number reused).  Either way the
unregister has already happened; any other error is a bug and propagates.
"""


class FdTooLargeError(ValueError):
    """The descriptor is beyond what this poller can watch (select's FD_SETSIZE)."""


class Poller(abc.ABC):
    """Register / modify / unregister descriptors and wait for readiness.

    A poller is not thread-safe; the loop owns it.  Registering a descriptor
    twice raises `KeyError`-like `FileExistsError`; unregistering one that is
    not registered is a silent no-op, because a descriptor may already have
    been closed (and dropped by the kernel) by the time its owner lets go.
    """

    name: ClassVar[str]
    READABLE: ClassVar[int]
    WRITABLE: ClassVar[int]
    max_fd: ClassVar[int | None] = None

    @classmethod
    def available(cls) -> bool:
        """Whether this operating system provides the kernel interface."""
        return True

    @abc.abstractmethod
    def register(self, fd: int, events: int) -> None:
        """Start watching `fd` for `events` (a non-zero mix of READ and WRITE)."""

    @abc.abstractmethod
    def modify(self, fd: int, events: int) -> None:
        """Change the interest set of a registered `fd`."""

    @abc.abstractmethod
    def unregister(self, fd: int) -> None:
        """Stop watching `fd`; a no-op if it is not registered."""

    @abc.abstractmethod
    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """Wait up to `timeout` seconds (None: forever) and return ready pairs.

        Test the bits of each pair against `READABLE` and `WRITABLE`.  A
        signal arriving during the wait never raises `InterruptedError`: the
        wait either resumes (PEP 475) or returns early with what is ready.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the kernel object, if any."""

    def fileno(self) -> int:
        """The kernel object's descriptor, or -1 for stateless pollers."""
        return -1

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClosedPoll:
    """What a closed `poll` poller holds: any use fails as on a closed epoll object."""

    @staticmethod
    def error() -> ValueError:
        return ValueError("I/O operation on a closed poller")

    def register(self, fd: int, mask: int) -> None:
        raise self.error()

    def modify(self, fd: int, mask: int) -> None:
        raise self.error()

    def unregister(self, fd: int) -> None:
        raise self.error()

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        raise self.error()
