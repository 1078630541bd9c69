"""TLS contexts with modern defaults, and setup failures told apart.

OpenSSL reports most setup mistakes as the same "PEM lib" error, and would
prompt on the terminal for an encrypted key's password; a server must do
neither.  These functions check each file for what it should hold, never
prompt, and raise `TLSSetupError` with a `kind` the command line turns into
its own sentence (the wording lives in `cli.py`).

Every file is read once, into memory, by `read_file`: a path such as
``/dev/fd/63`` (a shell's ``<(...)``) is a pipe that can be read only once
and exists only in the process it was given to, so what was read is what
`--workers` hands its workers.  A pipe is read without blocking, up to
`READ_TIMEOUT`: a FIFO nobody writes to is an error, not a hung start-up.
Only regular files and pipes are taken, at most `MAX_FILE` bytes.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import stat
import tempfile
from collections.abc import Iterator, Mapping

MAX_FILE = 1 << 20
READ_TIMEOUT = 10.0
"""How long a pipe (``<(...)``, a FIFO) may take to deliver its content and end."""


class TLSSetupError(Exception):
    """`kind`: missing, unreadable, not-cert, not-key, mismatch, needs-password, wrong-password.

    `role` says which file it is (cert, key, client_ca, password, ca), so a
    message names the right option even when two of them name one path.
    """

    def __init__(self, kind: str, path: str, detail: str = "", role: str = "") -> None:
        super().__init__(f"{kind}: {path} {detail}".strip())
        self.kind = kind
        self.path = path
        self.detail = detail
        self.role = role


class _NoPassword(Exception):
    """Aborts `load_cert_chain` from the password callback: the key wants a password."""


def read_file(path: str, role: str = "") -> bytes:
    """The content of `path`, a regular file or a pipe, read once and never hanging."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise TLSSetupError("missing", path, role=role) from None
    except IsADirectoryError:
        raise TLSSetupError("unreadable", path, "is a directory", role=role) from None
    except OSError as exc:
        raise TLSSetupError("unreadable", path, exc.strerror or str(exc), role=role) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise TLSSetupError("unreadable", path, "is a directory", role=role)
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            data = _read_all(fd, None)
        elif stat.S_ISFIFO(mode):
            data = _read_all(fd, READ_TIMEOUT)
            if not data:
                raise TLSSetupError(
                    "unreadable", path, "it is a pipe with nothing written to it", role=role
                )
        else:
            raise TLSSetupError(
                "unreadable", path, "it is neither a regular file nor a pipe", role=role
            )
    except OSError as exc:
        raise TLSSetupError("unreadable", path, exc.strerror or str(exc), role=role) from None
    except TimeoutError:
        raise TLSSetupError(
            "unreadable",
            path,
            f"it is a pipe still open with no end after {READ_TIMEOUT:g} s",
            role=role,
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise TLSSetupError(
            "unreadable", path, f"larger than {MAX_FILE >> 20} MiB", role=role
        )
    return data


def _read_all(fd: int, timeout: float | None) -> bytes:
    """Up to MAX_FILE + 1 bytes; with `timeout`, `fd` is non-blocking and must end in time."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_FILE:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            assert deadline is not None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError from None
            continue
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _content(
    path: str, role: str, contents: Mapping[str, bytes] | None
) -> bytes:
    if contents is not None and role in contents:
        return contents[role]
    return read_file(path, role)


@contextlib.contextmanager
def _as_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths that read as `blobs`: `load_cert_chain` takes only paths, never bytes.

    On Linux they are anonymous memory files; elsewhere files in a private
    temporary directory, removed at once after use.
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = [os.memfd_create("muxio-tls", os.MFD_CLOEXEC) for _ in blobs]
        try:
            for fd, blob in zip(fds, blobs, strict=True):
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="muxio-tls-") as root:
        paths = []
        for i, blob in enumerate(blobs):
            path = os.path.join(root, str(i))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            paths.append(path)
        yield paths


def _load_trust(ctx: ssl.SSLContext, path: str, data: bytes, role: str) -> None:
    try:
        ctx.load_verify_locations(cadata=data.decode("latin-1"))
    except ssl.SSLError as exc:
        raise TLSSetupError("not-cert", path, exc.reason or "", role=role) from None
    except (ValueError, TypeError) as exc:
        raise TLSSetupError("not-cert", path, str(exc), role=role) from None


def _modern(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def server_context(
    cert: str,
    key: str,
    *,
    client_ca: str | None = None,
    password: bytes | None = None,
    contents: Mapping[str, bytes] | None = None,
) -> ssl.SSLContext:
    """A server context: TLS 1.2+, the standard library's defaults, client certs if `client_ca`.

    `contents` holds files already read (by role: cert, key, client_ca), as
    a `--workers` supervisor hands them down; the paths then only name them.
    """
    cert_data = _content(cert, "cert", contents)
    key_data = _content(key, "key", contents)
    ca_data = _content(client_ca, "client_ca", contents) if client_ca is not None else None
    # only certificates load as trust anchors: tells a wrong certificate from a wrong key
    _load_trust(_modern(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)), cert, cert_data, "cert")
    ctx = _modern(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    asked: list[bool] = []

    def get_password() -> bytes:
        asked.append(True)
        if password is None:
            raise _NoPassword
        return password

    try:
        with _as_files(cert_data, key_data) as (cert_path, key_path):
            ctx.load_cert_chain(cert_path, key_path, password=get_password)
    except _NoPassword:
        raise TLSSetupError("needs-password", key, role="key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSSetupError("mismatch", key, role="key") from None
        kind = "wrong-password" if asked else "not-key"
        raise TLSSetupError(kind, key, role="key") from None
    if client_ca is not None:
        assert ca_data is not None
        _load_trust(ctx, client_ca, ca_data, "client_ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context: the system's CAs, or only `ca`; `insecure` verifies nothing."""
    cadata = read_file(ca, "ca").decode("latin-1") if ca is not None else None
    try:
        ctx = _modern(ssl.create_default_context(cadata=cadata))
    except ssl.SSLError as exc:
        raise TLSSetupError("not-cert", ca or "", exc.reason or "", role="ca") from None
    except (ValueError, TypeError) as exc:
        raise TLSSetupError("not-cert", ca or "", str(exc), role="ca") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def read_password(path: str, contents: Mapping[str, bytes] | None = None) -> bytes:
    """The first line of `path` (or of ``contents["password"]``), as a key's password."""
    data = _content(path, "password", contents)
    return data.split(b"\n", 1)[0].rstrip(b"\r")


__all__ = [
    "MAX_FILE",
    "READ_TIMEOUT",
    "TLSSetupError",
    "client_context",
    "read_file",
    "read_password",
    "server_context",
]
