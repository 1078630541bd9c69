"""Waiting for a socket to become readable or writable, for the `sock_*` coroutines.

The readiness callback only wakes the waiting coroutine, which then makes
the system call itself.  An operation cancelled as its data arrives
therefore leaves the data (or the connection) in the kernel for the next
caller, where asyncio's selector loop loses it; and coroutines waiting on
one descriptor share one registration, so a second `sock_recv` on a socket
no longer strands the first.

The registrations live on the loop (`loop._readiness`), created on first
use, so these helpers need only the public `AbstractEventLoop` API and work
on asyncio's stock loop too.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import weakref
from asyncio import AbstractEventLoop
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Registry = dict[tuple[int, bool], "Interest"]


def _wake(interest: Interest) -> None:
    for fut in interest.waiters:
        if not fut.done():
            fut.set_result(None)


def registry_of(loop: AbstractEventLoop) -> Registry:
    """The loop's (fd, direction) → `Interest` table, made on first use."""
    registry: Registry | None = getattr(loop, "_readiness", None)
    if registry is None:
        registry = {}
        loop._readiness = registry  # type: ignore[attr-defined]
    return registry


class Interest:
    """One loop registration per (fd, direction), shared by every waiting coroutine.

    The loop allows a single reader and a single writer per descriptor; two
    operations each calling `add_reader` would strand the first.  The
    registration is made on the first wait, not before, so an operation whose
    first system call succeeds costs no poller change at all.
    """

    __slots__ = ("owner", "registry", "users", "waiters")

    def __init__(self, registry: Registry, owner: socket.socket) -> None:
        self.registry = registry
        # a socket closed while waited on frees its fd for a new socket, which
        # must get its own registration rather than join the dead one's
        self.owner = weakref.ref(owner)
        self.users = 0
        self.waiters: list[asyncio.Future[None]] = []


class Waiter:
    """Waits for readiness of one fd in one direction for the span of a `with`."""

    __slots__ = ("fd", "interest", "loop", "sock", "write")

    def __init__(self, loop: AbstractEventLoop, sock: socket.socket, write: bool) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.write = write
        self.interest: Interest | None = None

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        interest = self.interest
        if interest is None:
            return
        self.interest = None
        interest.users -= 1
        if interest.users == 0 and interest.registry.get((self.fd, self.write)) is interest:
            del interest.registry[(self.fd, self.write)]
            if not self.loop.is_closed():
                if self.write:
                    self.loop.remove_writer(self.fd)
                else:
                    self.loop.remove_reader(self.fd)

    async def wait(self) -> None:
        interest = self.interest
        if interest is None:
            registry = registry_of(self.loop)
            key = (self.fd, self.write)
            interest = registry.get(key)
            if interest is None or interest.owner() is not self.sock:
                interest = Interest(registry, self.sock)
                if self.write:
                    self.loop.add_writer(self.fd, _wake, interest)
                else:
                    self.loop.add_reader(self.fd, _wake, interest)
                registry[key] = interest
            interest.users += 1
            self.interest = interest
        fut: asyncio.Future[None] = self.loop.create_future()
        interest.waiters.append(fut)
        try:
            await fut
        finally:
            interest.waiters.remove(fut)


async def until_ready(
    loop: AbstractEventLoop, sock: socket.socket, write: bool, attempt: Callable[[], T]
) -> T:
    """`attempt()` now, and again on each readiness, until it does not block.

    `attempt` looks the socket method up on every call, as asyncio does: a
    caller (or a test) may replace it between tries.
    """
    try:
        return attempt()
    except (BlockingIOError, InterruptedError):
        pass
    with Waiter(loop, sock, write) as waiter:
        while True:
            await waiter.wait()
            try:
                return attempt()
            except (BlockingIOError, InterruptedError):
                pass


def check_socket(loop: AbstractEventLoop, sock: socket.socket) -> None:
    """asyncio's refusals before any `sock_*` operation."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    if loop.get_debug() and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")
