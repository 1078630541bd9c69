"""TLS contexts with modern defaults, and setup failures told apart.

OpenSSL reports most setup mistakes as the same "PEM lib" error, and would
prompt on the terminal for an encrypted key's password; a server must do
neither.  These functions check each file for what it should hold, never
prompt, and raise `TLSSetupError` with a `kind` the command line turns into
its own sentence (the wording lives in `cli.py`).
"""

from __future__ import annotations

import ssl


class TLSSetupError(Exception):
    """`kind`: missing, unreadable, not-cert, not-key, mismatch, needs-password, wrong-password."""

    def __init__(self, kind: str, path: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {path} {detail}".strip())
        self.kind = kind
        self.path = path
        self.detail = detail


class _NoPassword(Exception):
    """Aborts `load_cert_chain` from the password callback: the key wants a password."""


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise TLSSetupError("missing", path) from None
    except IsADirectoryError:
        raise TLSSetupError("unreadable", path, "is a directory") from None
    except OSError as exc:
        raise TLSSetupError("unreadable", path, exc.strerror or str(exc)) from None


def _load_trust(ctx: ssl.SSLContext, path: str) -> None:
    _check_readable(path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSSetupError("not-cert", path, exc.reason or "") from None


def _modern(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def server_context(
    cert: str, key: str, *, client_ca: str | None = None, password: bytes | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.2+, the standard library's defaults, client certs if `client_ca`."""
    for path in (cert, key):
        _check_readable(path)
    # only certificates load as trust anchors: tells a wrong --tls-cert from a wrong key
    _load_trust(_modern(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)), cert)
    ctx = _modern(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    asked: list[bool] = []

    def get_password() -> bytes:
        asked.append(True)
        if password is None:
            raise _NoPassword
        return password

    try:
        ctx.load_cert_chain(cert, key, password=get_password)
    except _NoPassword:
        raise TLSSetupError("needs-password", key) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSSetupError("mismatch", key) from None
        raise TLSSetupError("wrong-password" if asked else "not-key", key) from None
    if client_ca is not None:
        _load_trust(ctx, client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str | None = None, *, insecure: bool = False) -> ssl.SSLContext:
    """A client context: the system's CAs, or only `ca`; `insecure` verifies nothing."""
    if ca is not None:
        _check_readable(ca)
    try:
        ctx = _modern(ssl.create_default_context(cafile=ca))
    except ssl.SSLError as exc:
        raise TLSSetupError("not-cert", ca or "", exc.reason or "") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def read_password(path: str) -> bytes:
    """The first line of `path`, as a key's password."""
    _check_readable(path)
    with open(path, "rb") as f:
        return f.readline().rstrip(b"\r\n")


__all__ = ["TLSSetupError", "client_context", "read_password", "server_context"]
