"""Binding every listening socket muxio makes: TCP, and Unix stream or datagram.

One core per kind, with what differs between callers as parameters:
asyncio's `create_server` and `create_unix_server` keep asyncio's
exceptions and messages; `bind_tcp` and `bind_unix` (for `muxio serve` and
for users handing sockets to `Server`) turn the same failures into one-line
`RuntimeFailure` / `UsageError` messages.

A Unix socket path gets one rule everywhere: a socket file there is removed
only if nothing answers on it.  Taking over a live server's path (asyncio's
rule) would leave that server running and unreachable; symlinks and files
that are not sockets are never removed either.  Whoever closes a listening
socket also removes its file, and only while it is still the one bound
here (`UnixFile`): a successor's socket at the same path is left alone.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterable
from typing import Any

from .errors import RuntimeFailure, UsageError

log = logging.getLogger("muxio")

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]

_PY313 = sys.version_info >= (3, 13)
_HAS_IPV6 = hasattr(socket, "AF_INET6")


def asyncio_reason(exc: OSError) -> str:
    """How asyncio quotes an OSError inside its own messages (changed in 3.13)."""
    if _PY313 or not exc.strerror:
        return str(exc).lower()
    return exc.strerror.lower()


def set_reuse_port(sock: socket.socket) -> None:
    """SO_REUSEPORT, refused as asyncio refuses it where the kernel lacks it."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


# -- TCP ----------------------------------------------------------------------


class BindError(OSError):
    """A bind that failed, worded as asyncio words it; `sockaddr` and `cause` for other wordings."""

    def __init__(self, cause: OSError, sockaddr: tuple[Any, ...]) -> None:
        msg = f"error while attempting to bind on address {sockaddr!r}: {asyncio_reason(cause)}"
        super().__init__(cause.errno, msg)
        self.sockaddr = sockaddr
        self.cause = cause


def open_tcp_listeners(
    infos: Iterable[AddrInfo],
    *,
    backlog: int | None = 100,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    keep_alive: bool | None = None,
    share_port: bool = False,
    skip_unusable: bool = True,
) -> list[socket.socket]:
    """Non-blocking sockets bound on already resolved addresses, one per distinct address.

    `backlog=None` binds without listening (a socket that holds a port).
    With `share_port`, port 0 means one ephemeral port for all, the first
    socket's, rather than one each (asyncio's).  `skip_unusable` passes over
    families the kernel lacks or has configured off, as asyncio does.  A
    failure closes every socket already made.
    """
    if reuse_address is None:
        reuse_address = os.name == "posix" and sys.platform != "cygwin"
    unique = list(dict.fromkeys(infos))
    sockets: list[socket.socket] = []
    shared_port: int | None = None
    completed = False
    try:
        for family, type_, proto, _, sockaddr in unique:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError:
                if not skip_unusable:
                    raise
                log.debug("cannot create socket(%r, %r, %r)", family, type_, proto, exc_info=True)
                continue
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
            if reuse_port:
                set_reuse_port(sock)
            if keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            if _HAS_IPV6 and family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # one socket per family: Linux would otherwise take v4 on the v6 one too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
            if shared_port is not None:
                sockaddr = (sockaddr[0], shared_port, *sockaddr[2:])
            try:
                sock.bind(sockaddr)
            except OSError as err:
                if skip_unusable and _PY313 and err.errno == errno.EADDRNOTAVAIL:
                    # the family is configured off (bpo-30945)
                    sockets.pop()
                    sock.close()
                    log.debug("%s", BindError(err, sockaddr).strerror)
                    continue
                raise BindError(err, sockaddr) from None
            if share_port and sockaddr[1] == 0:
                shared_port = sock.getsockname()[1]
        if not sockets:
            raise OSError(f"could not bind on any address out of {[info[4] for info in unique]!r}")
        for sock in sockets:
            sock.setblocking(False)
            if backlog is not None:
                sock.listen(backlog)
        completed = True
    finally:
        if not completed:
            for sock in sockets:
                sock.close()
    return sockets


def bind_tcp(
    host: str, port: int, *, backlog: int | None = 1024, reuse_port: bool = False
) -> list[socket.socket]:
    """Bind and listen on every address `host` resolves to (IPv4 and IPv6).

    `backlog=None` binds without listening: sockets that hold a port (with
    `reuse_port`, for workers that bind their own) but take no connection.
    Port 0 on a name with several addresses: all share the first one's port.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise RuntimeFailure(f"cannot resolve host {host!r}: {exc.strerror}") from None
    except UnicodeError:
        shown = host if len(host) <= 40 else host[:40] + "..."
        raise UsageError(
            f"invalid host {shown!r}: each dot-separated part of a name is 1 to 63 characters"
        ) from None
    try:
        return open_tcp_listeners(
            infos,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port,
            share_port=True,
            skip_unusable=False,
        )
    except BindError as exc:
        ip, bound_port = exc.sockaddr[:2]
        where = f"[{ip}]:{bound_port}" if ":" in str(ip) else f"{ip}:{bound_port}"
        raise RuntimeFailure(f"cannot listen on {where}: {_explain(exc.cause)}") from None


def _explain(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (stop the other server or choose another port)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (choose a port above 1023 or run with the needed privilege)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine (check the host)"
    return exc.strerror or str(exc)


# -- Unix -----------------------------------------------------------------------


class UnixFile:
    """The socket file a listener was bound to: removed only while it is still that file."""

    __slots__ = ("dev", "ino", "path")

    def __init__(self, path: str, dev: int, ino: int) -> None:
        self.path = path
        self.dev = dev
        self.ino = ino

    @classmethod
    def of(cls, sock: socket.socket) -> UnixFile | None:
        """The file `sock` is bound to now; None for an abstract or unbound socket."""
        bound = sock.getsockname()
        if not isinstance(bound, str) or not bound or _is_abstract(bound):
            return None
        try:
            info = os.lstat(bound)
        except OSError:
            return None
        return cls(bound, info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Unlink the file, unless another server has replaced it since."""
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == (self.dev, self.ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.error("Unable to clean up listening UNIX socket %r: %r", self.path, err)


class UnixListener(socket.socket):
    """A Unix socket muxio bound, carrying the file it made (`bound_file`) to whoever closes it."""

    __slots__ = ("bound_file",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bound_file: UnixFile | None = None


def close_listener(sock: socket.socket) -> None:
    """Close a listening socket, and remove the socket file it bound if still its own."""
    bound = getattr(sock, "bound_file", None)
    if bound is not None:
        bound.remove()
    sock.close()


class UnixPathTaken(OSError):
    """Nothing may be bound at a Unix socket path; `reason` says what holds it.

    The message is asyncio's (`create_unix_server`); `reason` is one of
    "live", "symlink", "not a socket", "raced" or "unknown" (`detail` then
    says why the probe could not tell), for callers that word it otherwise.
    """

    def __init__(self, path: str | bytes, reason: str, detail: str = "") -> None:
        super().__init__(errno.EADDRINUSE, f"Address {path!r} is already in use")
        self.path = path
        self.reason = reason
        self.detail = detail


def _is_abstract(path: str | bytes) -> bool:
    return bool(path) and path[0] in (0, "\0")


def clear_unix_path(path: str | bytes, type: int = socket.SOCK_STREAM) -> None:
    """Make `path` free for bind: remove a stale socket file, refuse anything else.

    A path that cannot even be looked at is left for bind, whose error
    then says why.
    """
    if _is_abstract(path):
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnixPathTaken(path, "symlink")
    if not stat.S_ISSOCK(st.st_mode):
        raise UnixPathTaken(path, "not a socket")
    if _answers(path, type):
        raise UnixPathTaken(path, "live")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UnixPathTaken(path, "unknown", f"cannot remove it ({exc.strerror or exc})") from None


def _answers(path: str | bytes, type: int) -> bool:
    """True if a socket is bound and alive at `path`."""
    probe = socket.socket(socket.AF_UNIX, type)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EPROTOTYPE):
            return True  # a full backlog, or a live socket of the other type
        raise UnixPathTaken(
            path, "unknown", f"cannot tell whether a server is using it ({exc.strerror or exc})"
        ) from None
    finally:
        probe.close()
    return True


def bind_unix_listener(
    path: str | bytes | os.PathLike[Any],
    *,
    backlog: int = 100,
    mode: int | None = None,
    remember: bool = True,
) -> UnixListener:
    """A listening non-blocking Unix stream socket at `path`, under the one rule above.

    `mode` sets the file's permissions before the socket listens, so nobody
    can connect under the umask's looser ones.  With `remember`, the file is
    noted in `bound_file` for `close_listener`.  Raises `UnixPathTaken`, or
    bind's own OSError.
    """
    address = os.fspath(path)
    clear_unix_path(address)
    sock = UnixListener(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        if mode is not None:
            os.chmod(address, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UnixPathTaken(address, "raced") from None
        raise
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    if remember:
        sock.bound_file = UnixFile.of(sock)
    return sock


_UNIX_PATH_MAX = 107
"""Bytes a Unix socket path may hold (sun_path is 108 on Linux, 104 on BSDs and macOS)."""


def bind_unix(path: str, *, backlog: int = 1024, mode: int | None = None) -> list[socket.socket]:
    """Listen on a Unix socket, replacing a stale socket file but nothing else.

    A list of one, like `bind_tcp`, so either result can be handed to `Server`.
    A live server's socket is never taken over.  `mode` sets the file's
    permissions before the socket listens; by default the umask decides.
    The file is removed at `Server.close()` only while it is still this one.
    """
    if not path:
        raise UsageError("bind_unix needs a path: an empty one names no file")
    size = len(os.fsencode(path))
    if size > _UNIX_PATH_MAX:
        raise UsageError(
            f"Unix socket path {path!r} is {size} bytes long; a Unix socket path holds at most "
            f"{_UNIX_PATH_MAX} (use a shorter or a relative path)"
        )
    try:
        return [bind_unix_listener(path, backlog=backlog, mode=mode)]
    except UnixPathTaken as exc:
        raise RuntimeFailure(_taken(path, exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot listen on {path}: {_explain_path(exc, path)}") from None


def _taken(path: str, exc: UnixPathTaken) -> str:
    if exc.reason == "live":
        return f"another server is listening on {path} (stop it or choose another path)"
    if exc.reason == "symlink":
        return (
            f"cannot listen on {path}: a symbolic link is there (remove it or choose another path)"
        )
    if exc.reason == "not a socket":
        return f"cannot listen on {path}: a file that is not a socket is there"
    if exc.reason == "raced":
        return f"cannot listen on {path}: something took the path meanwhile (choose another path)"
    return f"cannot listen on {path}: {exc.detail}"


def _explain_path(exc: OSError, path: str) -> str:
    if exc.errno == errno.ENOTDIR:
        return "a component of the path is a file, not a directory"
    if exc.errno == errno.ENOENT:
        return f"the directory {os.path.dirname(path) or '.'} does not exist"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (choose a directory you may write to)"
    if exc.errno == errno.ENAMETOOLONG:
        return "the path is too long"
    return exc.strerror or str(exc)
