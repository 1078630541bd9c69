"""`muxio serve --service module:factory`: your own protocol or coroutine handler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import serve_process

MODULE = textwrap.dedent(
    """
    import sys
    import muxio

    class Reverse(muxio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data[::-1])

    def factory():
        return Reverse()

    async def handler(reader, writer):
        line = await reader.readline()
        writer.write(b"handled " + line)
        await writer.drain()
        writer.close()

    not_callable = 42

    def _started(loop):
        print("on_start ran with", type(loop).__name__, file=sys.stderr, flush=True)

    def _closed(seconds_left):
        print("on_close ran with", seconds_left > 0, file=sys.stderr, flush=True)

    service = muxio.Service(factory, on_start=_started, on_close=_closed)

    class Quacks(Reverse):
        # hook-like names on a factory are its own business, not the runner's
        def on_start(loop):
            print("duck-typed on_start ran", file=sys.stderr, flush=True)

        def on_close(seconds_left):
            print("duck-typed on_close ran", file=sys.stderr, flush=True)
    """
)


@pytest.fixture
def mymod_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mymod.py").write_text(MODULE)
    existing = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{existing}")
    return tmp_path


def test_serve_runs_a_protocol_factory_from_a_user_module(mymod_on_path: Path) -> None:
    with serve_process("--port", "0", "--service", "mymod:factory") as srv:
        with srv.connect() as conn:
            conn.sendall(b"abc")
            assert conn.recv(100) == b"cba"
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
        assert srv.summary()["drain"] == "complete"


def test_serve_runs_a_coroutine_handler_from_a_user_module(mymod_on_path: Path) -> None:
    with serve_process("--port", "0", "--service", "mymod:handler") as srv:
        with srv.connect() as conn:
            conn.sendall(b"hi\n")
            assert conn.recv(100) == b"handled hi\n"
            assert conn.recv(100) == b""
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0


def test_serve_runs_a_service_with_its_start_and_close_hooks(mymod_on_path: Path) -> None:
    with serve_process("--port", "0", "--service", "mymod:service") as srv:
        assert "on_start ran with EventLoop" in srv.lines
        with srv.connect() as conn:
            conn.sendall(b"abc")
            assert conn.recv(100) == b"cba"
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
    assert "on_close ran with True" in srv.lines


def test_hook_named_attributes_of_a_factory_are_not_called(mymod_on_path: Path) -> None:
    with serve_process("--port", "0", "--service", "mymod:Quacks") as srv:
        with srv.connect() as conn:
            conn.sendall(b"abc")
            assert conn.recv(100) == b"cba"
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
    assert not [line for line in srv.lines if "duck-typed" in line or "on_close" in line]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("mymod", "unknown service"),
        ("nosuchmodule_xyz:factory", "cannot import"),
        ("mymod:missing", "no attribute"),
        ("mymod:not_callable", "not a Service, a protocol factory"),
        (":factory", "write module:factory"),
    ],
)
def test_bad_service_spec_is_one_line_and_exit_2(
    mymod_on_path: Path, spec: str, problem: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "muxio", "serve", "--port", "0", "--service", spec],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], proc.stderr


def test_help_lists_the_builtin_services() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "muxio", "serve", "--help"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    for name in ("upper", "upper-streams", "work", "module:factory"):
        assert name in out
