"""The servers compare knows, whether each can run here, and how each is started."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass

from muxio.errors import RuntimeFailure, UsageError
from muxio.tools import process


@dataclass(frozen=True)
class ServerSpec:
    """A server as compare starts it; the host and port 0 are appended."""

    name: str
    argv: tuple[str, ...]
    available: bool = True
    why_not: str = ""
    env: tuple[tuple[str, str], ...] = ()
    """Variables set for this server only (`MUXIO_PURE=1` for the pure build)."""


@dataclass(frozen=True)
class TLSFiles:
    """The certificate and key every server serves with over TLS."""

    cert: str
    key: str

    def argv(self) -> tuple[str, ...]:
        return ("--tls-cert", self.cert, "--tls-key", self.key)


_NO_TLS = {"naive-select", "threads"}


def _peer(module: str, *extra: str) -> tuple[str, ...]:
    return (sys.executable, "-m", f"muxio.tools.peers.{module}", *extra)


def _muxio_command() -> tuple[tuple[str, ...], str]:
    """How to start `muxio serve` here, or why it cannot be started."""
    try:
        if importlib.util.find_spec("muxio.__main__") is not None:
            return (sys.executable, "-m", "muxio"), ""
        if importlib.util.find_spec("muxio.cli") is not None:
            code = "import sys; from muxio.cli import main; sys.exit(main())"
            return (sys.executable, "-c", code), ""
    except ImportError:
        pass
    return (), "muxio's command line is not importable"


def _builds(specs: list[ServerSpec]) -> list[ServerSpec]:
    """muxio's two builds of the native and the asyncio-Protocol server, as servers of their own.

    The pure one is the installed package run with `MUXIO_PURE=1`; the
    compiled one exists only where the installed package was compiled.
    """
    from muxio import _build

    compiled = bool(_build.extensions_on_disk())
    why = "" if compiled else "this muxio is not compiled (pip install . with a C compiler)"
    out = []
    for spec in specs:
        if spec.name not in ("muxio-epoll", "muxio-asyncio-protocol"):
            continue
        rest = spec.name.removeprefix("muxio-")
        out.append(
            dataclasses.replace(
                spec,
                name=f"muxio-compiled-{rest}",
                available=spec.available and compiled,
                why_not=spec.why_not or why,
                env=(("MUXIO_PURE", "0"), ("MUXIO_EXPECT_BUILD", "compiled")),
            )
        )
        out.append(dataclasses.replace(spec, name=f"muxio-pure-{rest}", env=(("MUXIO_PURE", "1"),)))
    return out


def _with_tls(spec: ServerSpec, tls: TLSFiles | None) -> ServerSpec:
    if tls is None:
        return spec
    if spec.name in _NO_TLS:
        return ServerSpec(spec.name, spec.argv, False, "it has no TLS (drop it, or drop TLS)")
    return ServerSpec(spec.name, (*spec.argv, *tls.argv()), spec.available, spec.why_not)


def make_tls_files(directory: str) -> TLSFiles:
    """A throwaway self-signed certificate for 127.0.0.1, made by the `openssl` program.

    The load generator does not verify it: what is measured is the servers'
    cost, and they pay the same whatever the client trusts.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise UsageError(
            "making a throwaway certificate needs the openssl program; install it, "
            "or give a certificate and its key"
        )
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
             "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        raise RuntimeFailure(f"openssl could not make a throwaway certificate: {exc}") from None
    return TLSFiles(cert, key)


def _all_servers() -> list[ServerSpec]:
    base, why = _muxio_command()
    specs = []
    for poller in ("epoll", "kqueue", "devpoll", "poll", "select"):
        present = hasattr(select, poller)
        specs.append(
            ServerSpec(
                f"muxio-{poller}",
                (*base, "serve", "--poller", poller),
                available=present and not why,
                why_not=why or ("" if present else f"this OS has no {poller}"),
            )
        )
    specs += [
        ServerSpec("naive-select", _peer("naive_select")),
        ServerSpec("threads", _peer("threads")),
        ServerSpec("asyncio-protocol", _peer("asyncio_protocol")),
        ServerSpec("asyncio-streams", _peer("asyncio_streams")),
        ServerSpec("muxio-asyncio-protocol", _peer("asyncio_protocol", "--loop", "muxio")),
        ServerSpec("muxio-asyncio-streams", _peer("asyncio_streams", "--loop", "muxio")),
        ServerSpec("muxio-upper-streams", (*base, "serve", "--service", "upper-streams")),
    ]
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    no_uvloop = "" if has_uvloop else "uvloop is not installed (pip install uvloop)"
    for name, peer in (("uvloop", "asyncio_protocol"), ("uvloop-streams", "asyncio_streams")):
        specs.append(
            ServerSpec(
                name, _peer(peer, "--loop", "uvloop"), available=has_uvloop, why_not=no_uvloop
            )
        )
    return specs + _builds(specs)


def all_servers(tls: TLSFiles | None = None) -> list[ServerSpec]:
    """Every server compare knows, marked with whether it can run on this machine."""
    return [_with_tls(s, tls) for s in _all_servers()]


def available_servers() -> list[ServerSpec]:
    return [s for s in all_servers() if s.available]


def select_servers(text: str | None, tls: TLSFiles | None = None) -> list[ServerSpec]:
    """The servers a comma list names, in its order; every available one for None or ''."""
    known = {s.name: s for s in all_servers(tls)}
    if text is None:
        return [s for s in known.values() if s.available]
    chosen: list[ServerSpec] = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        spec = known.get(name)
        if spec is None:
            names = ", ".join(s.name for s in known.values() if s.available)
            raise UsageError(f"unknown server {name!r}; choose from {names}")
        if not spec.available:
            raise UsageError(f"server {name} cannot run here: {spec.why_not}; drop it")
        if spec not in chosen:
            chosen.append(spec)
    if not chosen:
        raise UsageError("no server named; name at least one, e.g. threads")
    return chosen


class SpecProcess(process.ServerProcess):
    """A `ServerSpec` started on `host`, port 0, pinned to `cpu`, in its own session.

    Its stderr goes to a file: compare's load generator forks, which is only
    safe while this process runs no reader thread.
    """

    def __init__(self, spec: ServerSpec, host: str = "127.0.0.1", cpu: int | None = None) -> None:
        self.spec = spec
        super().__init__(
            [*spec.argv, "--host", host, "--port", "0"],
            env={**process.source_env(), **dict(spec.env)},
            name=spec.name,
            cpu=cpu,
            log_file=True,
            new_session=True,
        )
