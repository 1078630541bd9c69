"""Start-up under hostile configuration: one line and an exit code, never a hang or a loop.

`--workers` with a secret in a ``/dev/fd/N`` pipe, a worker that cannot
start as configured, FIFOs and shared paths among the TLS options, service
modules that exit or raise, and a reload with a broken certificate.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from helpers import ServeProcess, one_line

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="needs /dev/fd"),
]

MUXIO = [sys.executable, "-m", "muxio"]
WORKER_READY = re.compile(r"worker (\d+) \(pid (\d+)\) ready")
PASSWORD = b"s3cret"


class Tls:
    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert = root / "cert.pem"
        self.key = root / "key.pem"
        self.encrypted_key = root / "encrypted.key"
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        leaf.private_key_pem.write_to_path(str(self.key))
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        self.encrypted_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(PASSWORD),
            )
        )

    def handshake(self, port: int) -> str:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(
            raw, server_hostname="localhost"
        ) as tls:
            tls.sendall(b"hello\n")
            return tls.recv(100).decode()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return Tls(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def pipe_holding(data: bytes) -> Iterator[int]:
    """What a shell's ``<(printf ...)`` gives: the read end of a pipe that has `data`, then EOF."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        yield r
    finally:
        os.close(r)


@contextlib.contextmanager
def supervisor(*args: str, pass_fds: tuple[int, ...] = ()) -> Iterator[ServeProcess]:
    sp = ServeProcess("--port", "0", *args, pass_fds=pass_fds)
    try:
        yield sp
    finally:
        if sp.proc.poll() is None:
            sp.signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sp.proc.wait(15)
        sp.kill()


def test_workers_get_a_password_given_as_dev_fd(tls: Tls) -> None:
    with pipe_holding(PASSWORD + b"\n") as fd, supervisor(
        "--workers", "2", "--tls-cert", str(tls.cert), "--tls-key", str(tls.encrypted_key),
        "--tls-key-password-file", f"/dev/fd/{fd}", pass_fds=(fd,),
    ) as sp:
        sp.wait_listening()
        ready = {int(sp.wait_line(WORKER_READY, 30).group(1)) for _ in range(2)}
        assert ready == {1, 2}, sp.lines
        assert tls.handshake(sp.port) == "HELLO\n"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert not [line for line in sp.lines if "died" in line or "no such file" in line], sp.lines


def test_the_secret_is_on_no_worker_command_line_or_environment(tls: Tls) -> None:
    with pipe_holding(PASSWORD + b"\n") as fd, supervisor(
        "--workers", "2", "--tls-cert", str(tls.cert), "--tls-key", str(tls.encrypted_key),
        "--tls-key-password-file", f"/dev/fd/{fd}", pass_fds=(fd,),
    ) as sp:
        sp.wait_listening()
        pid = int(sp.wait_line(WORKER_READY, 30).group(2))
        for name in ("cmdline", "environ"):
            assert PASSWORD not in Path(f"/proc/{pid}/{name}").read_bytes()


def test_a_worker_failing_its_configuration_stops_the_supervisor_with_exit_2(
    tmp_path: Path,
) -> None:
    """A module that imports in the supervisor but not in a worker: no endless restarts."""
    marker = tmp_path / "imported-once"
    (tmp_path / "twice.py").write_text(
        "import pathlib\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if marker.exists():\n"
        "    raise RuntimeError('the second import fails')\n"
        "marker.touch()\n"
        "from muxio.services.upper import UpperEcho as factory\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [*MUXIO, "serve", "--port", "0", "--workers", "2", "--service", "twice:factory"],
        capture_output=True, timeout=60, env=env,
    )
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 2, lines
    assert "the second import fails" in lines[-1] and lines[-1].startswith("muxio: "), lines
    assert "Traceback" not in proc.stderr.decode()
    assert not [line for line in lines if "restarting" in line], lines
    assert len([line for line in lines if "the second import fails" in line]) == 1, lines


def test_client_ca_equal_to_the_key_blames_the_client_ca(tls: Tls) -> None:
    proc = subprocess.run(
        [*MUXIO, "serve", "--port", "0", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
         "--tls-client-ca", str(tls.key)],
        capture_output=True, timeout=30,
    )
    line = one_line(proc.stderr)
    assert proc.returncode == 2, line
    assert f"--tls-client-ca {tls.key}: no PEM certificate" in line


@pytest.mark.parametrize("option", ["--tls-cert", "--tls-key", "--tls-key-password-file"])
def test_a_fifo_nobody_writes_is_one_line_not_a_hang(
    tls: Tls, tmp_path: Path, option: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    files = {"--tls-cert": str(tls.cert), "--tls-key": str(tls.key), option: str(fifo)}
    args = [a for pair in files.items() for a in pair]
    proc = subprocess.run(
        [*MUXIO, "serve", "--port", "0", *args], capture_output=True, timeout=30
    )
    line = one_line(proc.stderr)
    assert proc.returncode != 0, line
    assert f"{option} {fifo}: cannot read it (it is a pipe with nothing written to it)" in line


def test_a_module_exiting_at_import_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "raises.py").write_text(
        "def __getattr__(name):\n    raise RuntimeError(f'no {name} today')\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for spec, message in (
        ("quits:factory", "importing 'quits' called sys.exit(0)"),
        ("raises:factory", "looking up 'factory' failed: RuntimeError: no factory today"),
    ):
        proc = subprocess.run(
            [*MUXIO, "serve", "--port", "0", "--service", spec],
            capture_output=True, timeout=30, env=env,
        )
        line = one_line(proc.stderr)
        assert proc.returncode == 2, line
        assert message in line


def test_a_reload_with_a_broken_certificate_is_abandoned(tls: Tls, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(tls.cert.read_bytes())
    with supervisor(
        "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(tls.key)
    ) as sp:
        sp.wait_listening()
        for _ in range(2):
            sp.wait_line(WORKER_READY, 30)
        cert.write_text("not a certificate any more\n")
        sp.signal(signal.SIGHUP)
        line = sp.wait_line(r"reload: .*reload abandoned, old workers keep serving", 30)
        assert f"--tls-cert {cert}: no PEM certificate" in line.group(0)
        assert tls.handshake(sp.port) == "HELLO\n"
        started = [line for line in sp.lines if re.search(r"worker \d+ started", line)]
        assert len(started) == 2, sp.lines
        assert not [line for line in sp.lines if "restarting" in line], sp.lines


def test_add_signal_handler_from_a_thread_raises_runtime_error_like_asyncio() -> None:
    """Run in a child: it installs handlers, which must not stay in the test process."""
    code = (
        "import asyncio, signal, threading, muxio\n"
        "for make in (asyncio.SelectorEventLoop, muxio.EventLoop):\n"
        "    loop = make()\n"
        "    loop.add_signal_handler(signal.SIGUSR2, lambda: None)\n"
        "    got = []\n"
        "    def add():\n"
        "        try:\n"
        "            loop.add_signal_handler(signal.SIGUSR1, lambda: None)\n"
        "        except Exception as exc:\n"
        "            got.append(type(exc).__name__)\n"
        "    t = threading.Thread(target=add); t.start(); t.join()\n"
        "    loop.remove_signal_handler(signal.SIGUSR2)\n"
        "    loop.close()\n"
        "    print(make.__name__, got)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "_UnixSelectorEventLoop ['RuntimeError']", lines
    assert lines[1] == "EventLoop ['RuntimeError']", lines
