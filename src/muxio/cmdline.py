"""What every muxio command shares: one-line errors, argument types, address and TLS options.

`muxio` itself (cli.py) and the tools it runs (`muxio bench`, `muxio
compare`, each also a `python -m` program of its own) parse and fail alike;
this module sits below them all, so the tools need not import the command
that loads them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from .errors import MuxioError, RuntimeFailure, UsageError

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from typing import Any

    from .tls import TLSSetupError


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line that says where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def ascii_int(text: str) -> int | None:
    """An integer written in ASCII digits; `int()` alone also takes other scripts' digits."""
    digits = text.strip()
    if digits.startswith(("+", "-")):
        digits = digits[1:]
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(text.strip(), 10)


def port_number(text: str) -> int:
    value = ascii_int(text)
    if value is None or not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use a number from 0 to 65535")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number in [low, high], in ASCII digits."""

    def parse(text: str) -> int:
        value = ascii_int(text)
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: use a whole number from {low} to {high}"
            )
        return value

    return parse


positive_int = bounded_int(1, 1_000_000)


def bounded_float(high: float, low: float = 0.0) -> Callable[[str], float]:
    """An argparse type for a finite number in [low, high]: nan and inf never get through.

    A nan compares false with everything, so a loop waiting for it never ends;
    an inf overflows the first C call that takes it.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: use a number from {_plain(low)} to {_plain(high)}"
            )
        return value

    return parse


def text_checked(validator: Callable[[Any, str], object], flag: str) -> Callable[[str], Any]:
    """As `checked`, for a value that stays text (an address): the check returns what it parsed."""

    def parse(text: str) -> Any:
        try:
            return validator(text, flag)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def checked(validator: Callable[[Any, str], object], flag: str, *, whole: bool = False
            ) -> Callable[[str], Any]:
    """An argparse type that leaves the judging to the library's own check (`muxio.validate`).

    The library names its parameter; given the flag as the name, the same
    check names the flag, so the two can never disagree on what is valid.
    """

    def parse(text: str) -> Any:
        value: Any
        if whole:
            value = ascii_int(text)
            if value is None:
                value = text
        else:
            try:
                value = float(text)
            except ValueError:
                value = math.nan
        try:
            validator(value, flag)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc}") from None
        return value

    return parse


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def file_mode(text: str) -> int:
    """Permissions in octal, as chmod takes them (600, 0660)."""
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777 or not text.isascii():
        raise argparse.ArgumentTypeError(
            f"invalid mode {text!r}: use octal permissions such as 600 or 660"
        )
    return value


DEFAULT_PORT = 8080


def add_address_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to use (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=None, help="TCP port (default 8080)")
    p.add_argument("--unix", metavar="PATH", help="use a Unix socket instead of TCP")


def check_address(args: argparse.Namespace) -> None:
    """--unix excludes --host and --port; fill in their defaults otherwise."""
    if args.unix is not None:
        if not args.unix:
            raise UsageError("--unix needs a path (leave it out to use TCP)")
        given = [o for o, v in (("--host", args.host), ("--port", args.port)) if v is not None]
        if given:
            raise UsageError(f"--unix cannot be combined with {' or '.join(given)}")
    if args.host is None:
        args.host = "127.0.0.1"
    if args.port is None:
        args.port = DEFAULT_PORT
    if len(args.host) > 253:
        raise UsageError(f"--host is {len(args.host)} characters; a host name has at most 253")


def add_tls_client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls", action="store_true", help="speak TLS to the server")
    p.add_argument(
        "--ca", metavar="FILE", help="with --tls: trust only the CA certificates in FILE (PEM)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="with --tls: do not verify the server's certificate (testing only)",
    )
    p.add_argument(
        "--server-name",
        metavar="NAME",
        help="with --tls: the name to verify and send as SNI (default: --host)",
    )


SERVER_TLS_FLAGS = {
    "cert": "--tls-cert",
    "key": "--tls-key",
    "client_ca": "--tls-client-ca",
    "password": "--tls-key-password-file",
}


def _tls_error(exc: TLSSetupError, options: dict[str, str]) -> Exception:
    """One sentence per way a certificate, key or password file can be wrong.

    The option is found by the file's role, not its path: two options may
    name one file, and the message must blame the one that is wrong.
    """
    path = exc.path
    opt = options.get(f"flag:{exc.role}") or options.get(path, "")
    cert = options.get("cert", "")
    if exc.kind == "missing":
        return UsageError(f"{opt} {path}: no such file (check the path)")
    if exc.kind == "unreadable":
        return RuntimeFailure(f"{opt} {path}: cannot read it ({exc.detail})")
    if exc.kind == "not-cert":
        return UsageError(
            f"{opt} {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
        )
    if exc.kind == "not-key":
        return UsageError(
            f"{opt} {path}: not a PEM private key (expected -----BEGIN ... PRIVATE KEY-----)"
        )
    if exc.kind == "mismatch":
        return UsageError(
            f"{opt} {path} is not the key of the certificate in --tls-cert {cert} "
            "(give the key the certificate was issued for)"
        )
    if exc.kind == "needs-password":
        return UsageError(
            f"{opt} {path} is encrypted: give its password with --tls-key-password-file FILE"
        )
    return UsageError(
        f"{opt} {path}: wrong password in --tls-key-password-file "
        f"{options.get('password', '')}"
    )


def server_tls(
    args: argparse.Namespace, contents: dict[str, bytes] | None = None
) -> ssl.SSLContext | None:
    """The context `muxio serve --tls-*` asks for: TLS 1.2+, client certs with a CA given.

    Each file is read once into `contents` (by role), unless already there:
    a `--workers` supervisor hands what it read to its workers, since a
    ``/dev/fd/N`` or a FIFO cannot be read a second time, or elsewhere.
    """
    if args.tls_cert is None and args.tls_key is None:
        extra = [
            o
            for o, v in (
                ("--tls-client-ca", args.tls_client_ca),
                ("--tls-key-password-file", args.tls_key_password_file),
            )
            if v is not None
        ]
        if extra:
            verb = "needs" if len(extra) == 1 else "need"
            raise UsageError(f"{' and '.join(extra)} {verb} --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise UsageError(
            "--tls-cert and --tls-key go together: the certificate and its private key"
        )
    from .tls import TLSSetupError, read_file, read_password, server_context

    options = {
        "cert": args.tls_cert,
        "password": args.tls_key_password_file or "",
        **{f"flag:{role}": flag for role, flag in SERVER_TLS_FLAGS.items()},
    }
    paths = {
        "cert": args.tls_cert,
        "key": args.tls_key,
        "client_ca": args.tls_client_ca,
        "password": args.tls_key_password_file,
    }
    if contents is None:
        contents = {}
    try:
        for role, path in paths.items():
            if path is not None and role not in contents:
                contents[role] = read_file(path, role)
        password = None
        if args.tls_key_password_file is not None:
            password = read_password(args.tls_key_password_file, contents)
        return server_context(
            args.tls_cert,
            args.tls_key,
            client_ca=args.tls_client_ca,
            password=password,
            contents=contents,
        )
    except TLSSetupError as exc:
        raise _tls_error(exc, options) from None


def client_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, str | None]:
    """`--tls [--ca FILE | --insecure] [--server-name NAME]`: the context and the name."""
    if not args.tls:
        given = [
            o
            for o, v in (
                ("--ca", args.ca),
                ("--insecure", args.insecure),
                ("--server-name", args.server_name),
            )
            if v
        ]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{' and '.join(given)} {verb} to --tls connections only")
        return None, None
    if args.ca is not None and args.insecure:
        raise UsageError("--ca and --insecure contradict each other: choose one")
    name = args.server_name
    if name is None:
        if getattr(args, "unix", None) is not None and not args.insecure:
            raise UsageError(
                "--tls over --unix needs --server-name NAME: the name in the server's certificate"
            )
        name = args.host or "127.0.0.1"
    from .tls import TLSSetupError, client_context

    try:
        return client_context(args.ca, insecure=args.insecure), name
    except TLSSetupError as exc:
        raise _tls_error(exc, {args.ca or "": "--ca", "flag:ca": "--ca"}) from None


def run_reporting(main: Callable[[], int]) -> int:
    """Run a command's body and turn muxio's errors into one line and an exit code.

    Shared by `muxio` and the tools' `python -m` entry points, so every way of
    starting a command fails alike and no user mistake ends in a traceback.
    """
    try:
        return main()
    except MuxioError as exc:
        print(f"muxio: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early, as by `| head`: nothing left to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
