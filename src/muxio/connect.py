"""Making connected sockets: happy eyeballs for TCP, and Unix stream sockets.

What `create_connection` and `create_unix_connection` connect with.  Only
the loop's public methods are used (`sock_connect`, `getaddrinfo`), as in
asyncio, so a loop (or a test) that replaces them is obeyed.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import sys
from asyncio import AbstractEventLoop
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .listeners import asyncio_reason
from .resolve import AddrInfo, ensure_resolved


def _interleave(infos: list[AddrInfo], first_family_count: int = 1) -> list[AddrInfo]:
    """Alternate address families (RFC 8305), `first_family_count` of the first one first."""
    by_family: dict[int, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    head: list[AddrInfo] = []
    if first_family_count > 1:
        head = lists[0][: first_family_count - 1]
        del lists[0][: first_family_count - 1]
    rest = itertools.chain.from_iterable(itertools.zip_longest(*lists))
    return head + [info for info in rest if info is not None]


async def _connect_one(
    loop: AbstractEventLoop,
    errors: list[list[OSError]],
    info: AddrInfo,
    local_infos: list[AddrInfo] | None,
) -> socket.socket:
    mine: list[OSError] = []
    errors.append(mine)
    family, type_, proto, _, address = info
    sock = None
    try:
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setblocking(False)
        if local_infos is not None:
            for lfamily, _, _, _, laddr in local_infos:
                if lfamily != family:
                    continue
                try:
                    sock.bind(laddr)
                    break
                except OSError as exc:
                    msg = f"error while attempting to bind on address {laddr!r}: "
                    mine.append(OSError(exc.errno, msg + asyncio_reason(exc)))
            else:
                if mine:
                    raise mine.pop()
                raise OSError(f"no matching local address with family={family!r} found")
        await loop.sock_connect(sock, address)
        return sock
    except OSError as exc:
        mine.append(exc)
        if sock is not None:
            sock.close()
        raise
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    finally:
        # the error's traceback holds this frame: its lists must not hold the error
        errors = mine = None  # type: ignore[assignment]


def _connect_error(errors: list[OSError], all_errors: bool) -> BaseException:
    """asyncio's one exception for every failed attempt."""
    if all_errors and sys.version_info >= (3, 11):
        return ExceptionGroup("create_connection failed", errors)  # noqa: F821 (3.11+)
    if len(errors) == 1:
        return errors[0]
    model = str(errors[0])
    if all(str(exc) == model for exc in errors):
        return errors[0]
    return OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))


async def connect_socket(
    loop: AbstractEventLoop,
    host: str | None,
    port: int | str | None,
    *,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    local_addr: tuple[Any, ...] | None = None,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    all_errors: bool = False,
) -> socket.socket:
    """A connected non-blocking TCP socket, as `create_connection` makes one.

    Every address `host` resolves to is tried in turn, or raced with
    `happy_eyeballs_delay` between starts (RFC 8305); sockets that lose are
    closed.  `all_errors` (Python 3.11+) raises an ExceptionGroup of every
    attempt's error instead of asyncio's single summary OSError.
    """
    if all_errors and sys.version_info < (3, 11):
        raise TypeError("all_errors needs Python 3.11 or later (ExceptionGroup)")
    if host is None and port is None:
        raise ValueError("host and port was not specified and no sock specified")
    if happy_eyeballs_delay is not None and interleave is None:
        interleave = 1
    infos = await ensure_resolved(
        loop, (host, port), family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
    )
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    local_infos = None
    if local_addr is not None:
        local_infos = await ensure_resolved(
            loop, local_addr, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
        )
        if not local_infos:
            raise OSError("getaddrinfo() returned empty list")
    if interleave:
        infos = _interleave(infos, interleave)

    errors: list[list[OSError]] = []
    sock: socket.socket | None = None
    if happy_eyeballs_delay is None:
        for info in infos:
            try:
                sock = await _connect_one(loop, errors, info, local_infos)
                break
            except OSError:
                continue
    else:
        sock = await _race(loop, errors, infos, local_infos, happy_eyeballs_delay)
    if sock is not None:
        return sock
    flat = [exc for sub in errors for exc in sub]
    errors.clear()  # the attempts' partials still hold it, and tracebacks hold them
    try:
        raise _connect_error(flat, all_errors)
    finally:
        del flat, errors


async def _attempt(
    loop: AbstractEventLoop,
    errors: list[list[OSError]],
    info: AddrInfo,
    local_infos: list[AddrInfo] | None,
    connected: list[socket.socket],
) -> socket.socket:
    """One contender of the race; a module function, so no closure cell holds `errors`."""
    try:
        sock = await _connect_one(loop, errors, info, local_infos)
        connected.append(sock)
        return sock
    finally:
        errors = connected = None  # type: ignore[assignment]


async def _race(
    loop: AbstractEventLoop,
    errors: list[list[OSError]],
    infos: list[AddrInfo],
    local_infos: list[AddrInfo] | None,
    delay: float,
) -> socket.socket | None:
    """Happy eyeballs through asyncio's own `staggered_race`.

    The errors of lost attempts carry tracebacks through frames that hold
    the lists they are kept in (gh-124858); the race's own list is emptied
    once read, so a failed connect leaves no reference cycle.
    """
    from asyncio import staggered

    connected: list[socket.socket] = []
    coro_fns: Iterable[Callable[[], Awaitable[socket.socket]]] = (
        functools.partial(_attempt, loop, errors, info, local_infos, connected)
        for info in infos
    )
    winner: socket.socket | None = None
    failure: BaseException | None = None
    try:
        winner, _, race_errors = await staggered.staggered_race(coro_fns, delay, loop=loop)
        if winner is None and not any(errors):
            # a failure that is not an OSError is a bug worth seeing, not a refusal
            failure = next((exc for exc in race_errors if exc is not None), None)
        race_errors.clear()
    finally:
        # a success the race did not return (we were cancelled at its end) must not leak
        for sock in connected:
            if sock is not winner:
                sock.close()
    if failure is not None:
        try:
            raise failure
        finally:
            failure = None
    return winner


async def unix_connect_socket(
    loop: AbstractEventLoop, path: str | bytes | os.PathLike[Any]
) -> socket.socket:
    """A connected non-blocking Unix stream socket."""
    address = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock
