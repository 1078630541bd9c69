"""The load generator must count every kind of failure and fail cleanly itself."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from muxio.errors import RuntimeFailure, UsageError
from muxio.tools.bench import BenchHooks, Progress, make_payloads, run_bench
from muxio.tools.compare import ServerProcess, ServerSpec

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _bench(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muxio.tools.bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SRC},
    )


@pytest.fixture
def peer_port() -> Iterator[int]:
    spec = ServerSpec("threads", (sys.executable, "-m", "muxio.tools.peers.threads"))
    server = ServerProcess(spec, "127.0.0.1", None)
    try:
        yield server.wait_listening()
    finally:
        server.stop()


class _NoUpper(socketserver.BaseRequestHandler):
    """Echoes without uppercasing: exactly the bug the bench must catch."""

    request: socket.socket

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _Silent(socketserver.BaseRequestHandler):
    """Reads and never answers, like a server stuck in a callback."""

    request: socket.socket

    def handle(self) -> None:
        try:
            while self.request.recv(65536):
                pass
        except OSError:
            pass


class _Hangup(socketserver.BaseRequestHandler):
    """Hangs up on the first request."""

    request: socket.socket

    def handle(self) -> None:
        self.request.recv(65536)


@contextlib.contextmanager
def _thread_server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    server.daemon_threads = True
    server.allow_reuse_address = True
    server.server_bind()
    server.server_activate()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def broken_port() -> Iterator[int]:
    with _thread_server(_NoUpper) as port:
        yield port


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.timeout(30)
def test_json_run_against_peer_has_no_errors(peer_port: int) -> None:
    args = ["--port", str(peer_port), "--connections", "10", "--processes", "2"]
    proc = _bench(*args, "--duration", "0.7", "--warmup", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["errors"]["total"] == 0
    assert result["requests"] > 0
    assert result["requests_per_s"] > 0
    assert result["processes"] == 2
    assert result["connected"] == 10
    for key in ("p50", "p90", "p99", "max", "mean"):
        assert result["latency_ms"][key] > 0
    lat = result["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


@pytest.mark.timeout(30)
def test_wrong_bytes_are_counted(broken_port: int) -> None:
    proc = _bench(
        "--port", str(broken_port), "--connections", "4", "--duration", "0.5",
        "--warmup", "0", "--json",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip(), f"no JSON result; stderr: {proc.stderr}"
    result = json.loads(proc.stdout)
    assert result["errors"]["wrong_bytes"] > 0
    assert result["ok"] is False


@pytest.mark.timeout(30)
def test_closed_port_is_one_line_exit_1() -> None:
    proc = _bench("--port", str(_closed_port()), "--duration", "0.5")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("muxio: cannot connect")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args",
    [["--connections", "0"], ["--port", "70000"], ["--duration", "0"], ["--processes", "0"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = _bench(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


class _Recorder(BenchHooks):
    def __init__(self) -> None:
        self.events: list[str] = []

    def window_start(self) -> None:
        self.events.append("start")

    def window_end(self) -> None:
        self.events.append("end")

    def tick(self, progress: Progress) -> None:
        self.events.append(progress.phase)


@pytest.mark.timeout(30)
def test_api_hooks_and_idle_connections(peer_port: int) -> None:
    hooks = _Recorder()
    result = run_bench(
        port=peer_port, connections=3, idle=20, duration=0.5, warmup=0.3, processes=1, hooks=hooks
    )
    assert result.ok, result.to_json()
    assert result.idle_connected == 20
    assert result.alive_at_end == 3
    assert hooks.events.count("start") == hooks.events.count("end") == 1
    assert hooks.events.index("start") < hooks.events.index("end")
    assert "warmup" in hooks.events[: hooks.events.index("start")]
    assert hooks.events[-1] == "done"
    assert json.loads(result.to_json())["errors"]["total"] == 0


def test_api_errors() -> None:
    with pytest.raises(UsageError):
        run_bench(port=1, connections=0)
    with pytest.raises(UsageError):
        run_bench(port=1, size=0)
    with pytest.raises(RuntimeFailure, match="cannot connect"):
        run_bench(port=_closed_port(), duration=0.1)


def test_payloads_exercise_case_and_non_ascii() -> None:
    for size in (1, 2, 1024, 70000):
        payloads = make_payloads(size, seed=1)
        assert len({len(p) for p in payloads}) == 1 and len(payloads[0]) == size
        assert all(p != p.upper() for p in payloads)
    big = make_payloads(1024, seed=1)[0]
    assert any(b >= 0x80 for b in big)
    assert any(ord("a") <= b <= ord("z") for b in big)


@pytest.mark.timeout(30)
def test_stalls_and_resets_are_counted() -> None:
    with _thread_server(_Silent) as port:
        result = run_bench(
            port=port, connections=3, duration=1.2, warmup=0, processes=1, stall_timeout=0.3
        )
    assert result.errors.stalls == 3
    assert result.requests == 0 and not result.ok
    with _thread_server(_Hangup) as port:
        result = run_bench(port=port, connections=3, duration=0.5, warmup=0, processes=1)
    assert result.errors.resets == 3
    assert result.alive_at_end == 0
