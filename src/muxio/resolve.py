"""Name resolution: the resolver off the loop's thread, and the IP-literal shortcut.

A host that is already an IP literal has one possible answer, so asking
the resolver (a thread hop on every loop) is skipped for it.  Two flavours
of that shortcut exist because asyncio has two: `loop.getaddrinfo` must
answer exactly what `socket.getaddrinfo` would, while asyncio's internal
`_ipaddr_info` (used before `sock_connect`, `create_server` and datagram
endpoints) keeps the caller's text and takes any `int()`-able port.
"""

from __future__ import annotations

import asyncio
import socket
from asyncio import AbstractEventLoop
from collections.abc import Iterable, Sequence
from typing import Any

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

HAS_IPV6 = hasattr(socket, "AF_INET6")
NUMERIC_SAFE_FLAGS = socket.AI_PASSIVE | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
"""getaddrinfo flags that cannot change the answer for a numeric host and port."""


def _strict_port(port: object) -> int | None:
    """The port as `socket.getaddrinfo` would read it, or None when unsure."""
    if port is None:
        return 0
    if type(port) is int:
        return port if 0 <= port <= 0xFFFF else None
    if isinstance(port, bytes):
        try:
            port = port.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(port, str) and port.isascii():
        if port == "":
            return 0
        if port.isdigit() and int(port) <= 0xFFFF:
            return int(port)
    return None


def _lenient_port(port: object) -> int | None:
    """The port as asyncio's `_ipaddr_info` reads it: None for a service name."""
    if port is None or port in ("", b""):
        return 0
    try:
        return int(port)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


def numeric_info(
    host: object,
    port: object,
    family: int,
    type: int,
    proto: int,
    flowinfo: int = 0,
    scopeid: int = 0,
    *,
    as_given: bool = False,
) -> AddrInfo | None:
    """The one getaddrinfo answer for an IP literal, without asking the resolver.

    None whenever the resolver could answer differently (names, service
    names, zone indices, odd type/proto pairs): the caller then asks it.
    By default the answer is getaddrinfo's own, address text canonical;
    `as_given` is asyncio's `_ipaddr_info` instead (see the module).
    """
    if type == socket.SOCK_STREAM:
        expected = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        expected = socket.IPPROTO_UDP
    else:
        return None
    allowed = (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP) if as_given else (0, expected)
    if proto not in allowed or host is None:
        return None
    portnum = _lenient_port(port) if as_given else _strict_port(port)
    if portnum is None:
        return None
    if isinstance(host, bytes):
        if as_given:
            host = host.decode("idna")
        else:
            try:
                host = host.decode("ascii")
            except UnicodeDecodeError:
                return None
    if not isinstance(host, str) or "%" in host or not (as_given or host.isascii()):
        return None
    if family == socket.AF_UNSPEC:
        families = [socket.AF_INET, socket.AF_INET6] if HAS_IPV6 else [socket.AF_INET]
    elif family == socket.AF_INET or (HAS_IPV6 and family == socket.AF_INET6):
        families = [socket.AddressFamily(family)]
    else:
        return None
    for af in families:
        try:
            packed = socket.inet_pton(af, host)
        except (OSError, ValueError):
            continue
        text = host if as_given else socket.inet_ntop(af, packed)
        kind = socket.SocketKind(type)
        if af == socket.AF_INET:
            return af, kind, expected, "", (text, portnum)
        return af, kind, expected, "", (text, portnum, flowinfo, scopeid)
    return None


async def ensure_resolved(
    loop: AbstractEventLoop,
    address: Sequence[Any],
    *,
    family: int = 0,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
    flags: int = 0,
) -> list[AddrInfo]:
    """asyncio's `_ensure_resolved`: a literal as is, anything else through the loop."""
    host, port = address[:2]
    info = numeric_info(host, port, family, type, proto, *address[2:])
    if info is not None:
        return [info]
    # the loop's own resolver, so a loop (or a test) that replaces it is obeyed
    infos = await loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    return list(infos)


async def resolve_server_hosts(
    loop: AbstractEventLoop,
    host: str | bytes | Iterable[str] | None,
    port: int | str | None,
    *,
    family: int = socket.AF_UNSPEC,
    flags: int = socket.AI_PASSIVE,
) -> list[AddrInfo]:
    """Every address `create_server` listens on for `host` ('' or None: all; or several).

    The hosts are resolved concurrently through the loop, in asyncio's order.
    """
    if host is None and port is None:
        raise ValueError("Neither host/port nor sock were specified")
    hosts: list[Any]
    if host == "" or host == b"":
        hosts = [None]
    elif isinstance(host, (str, bytes)) or not isinstance(host, Iterable):
        hosts = [host]
    else:
        hosts = list(host)

    async def resolve(one: Any) -> list[AddrInfo]:
        infos = await ensure_resolved(
            loop, (one, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({one!r}) returned empty list")
        return infos

    tasks = [loop.create_task(resolve(one)) for one in hosts]
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return [info for infos in results for info in infos]
