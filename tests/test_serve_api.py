"""`muxio.serve`: a protocol factory or a coroutine handler, drained on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import MUXIO_PATH

import muxio

SRC = MUXIO_PATH

CHILD = textwrap.dedent(
    """
    import asyncio, logging, sys
    import muxio
    logging.basicConfig(level=logging.INFO)

    class Upper(muxio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data.upper())

    async def handler(reader, writer):
        line = await reader.readline()
        writer.write(b"got " + line)
        await writer.drain()
        writer.close()

    service = handler if sys.argv[1] == "handler" else Upper
    sockets = muxio.bind_tcp("127.0.0.1", 0)
    def on_start(loop):
        print("port", sockets[0].getsockname()[1], flush=True)
    def on_close(left):
        print("closed", left >= 0, flush=True)
    totals = muxio.serve(service, sockets=sockets, on_start=on_start, on_close=on_close)
    print("drain", totals["drain"], flush=True)
    """
)


def run_child(kind: str, request: bytes) -> tuple[bytes, list[str]]:
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "port", first
        with socket.create_connection(("127.0.0.1", int(first[1])), timeout=10) as conn:
            conn.sendall(request)
            reply = conn.recv(1024)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "shutdown complete" in err
    return reply, out.splitlines()


def test_serve_runs_a_coroutine_handler_and_drains_on_sigterm() -> None:
    reply, lines = run_child("handler", b"hello\n")
    assert reply == b"got hello\n"
    assert lines == ["closed True", "drain complete"]


def test_serve_runs_a_protocol_factory_and_drains_on_sigterm() -> None:
    reply, lines = run_child("protocol", b"abc")
    assert reply == b"ABC"
    assert lines == ["closed True", "drain complete"]


def test_offloader_and_ordered_replies_are_public() -> None:
    assert muxio.Offloader.__module__ == "muxio.offload"
    assert muxio.OrderedReplies.__module__ == "muxio.offload"
    assert {"serve", "Offloader", "OrderedReplies"} <= set(muxio.__all__)


def test_bind_unix_returns_a_list_like_bind_tcp(tmp_path: Path) -> None:
    socks = muxio.bind_unix(str(tmp_path / "s"))
    try:
        assert isinstance(socks, list) and len(socks) == 1
        assert socks[0].family == socket.AF_UNIX
    finally:
        for s in socks:
            s.close()


def test_hooks_given_both_in_a_service_and_as_parameters_are_refused() -> None:
    service = muxio.Service(muxio.Protocol, on_close=lambda left: None)
    with pytest.raises(ValueError, match="on_start/on_close given twice"):
        muxio.serve(service, on_close=lambda left: None, sockets=[])


def test_service_refuses_a_factory_that_cannot_build_protocols() -> None:
    with pytest.raises(TypeError, match="factory"):
        muxio.Service(42)  # type: ignore[arg-type]
