# cython: annotation_typing=False
"""The stream transport's `read(fd, n)` and `write(fd, data)`: `os.read`/`os.write`, or C.

The pure build uses `os.read` and `os.write` themselves.  The compiled build
(Cython, with `fdio.pxd`) calls libc's `read`/`write` with the GIL held:
the transports' descriptors are non-blocking, so the call cannot wait, and
`os.read`/`os.write` hand the GIL to other threads and take it back around
every call (about 600 instructions per echo request under callgrind).  A
read lands in one 64 KiB buffer and is copied into a `bytes` of the size
read, where `os.read` allocates the full size asked for and shrinks it.
Errors are `os`'s: the same `OSError` subclasses from errno (EAGAIN:
`BlockingIOError`), and EINTR runs the signal handlers, then retries.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

try:
    import cython
except ImportError:  # the pure build: Cython is a build tool, never a run-time dependency
    COMPILED = False
else:
    COMPILED = cython.compiled

if TYPE_CHECKING:
    from collections.abc import Callable

    Buffer = bytes | bytearray | memoryview

    _c_read: Callable[[int, int], bytes]
    _c_write: Callable[[int, bytes], int]
    """The compiled build's (fdio.pxd); the pure build never calls them."""


def _compiled_read(fd: int, n: int) -> bytes:
    if 0 <= n <= _BUFSIZE:
        return _c_read(fd, n)  # noqa: F821 (fdio.pxd)
    return os.read(fd, n)


def _compiled_write(fd: int, data: Buffer) -> int:
    if type(data) is bytes:
        return _c_write(fd, data)  # noqa: F821 (fdio.pxd)
    return os.write(fd, data)


_BUFSIZE = 65536
read: Callable[[int, int], bytes] = _compiled_read if COMPILED else os.read
write: Callable[[int, Buffer], int] = _compiled_write if COMPILED else os.write
