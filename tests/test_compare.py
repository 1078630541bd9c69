"""compare must measure real servers and survive the ones that fall over."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from muxio.errors import UsageError
from muxio.tools.compare import (
    DEFAULT_WORKLOADS,
    ProcessTree,
    RunRecord,
    ServerProcess,
    ServerSpec,
    Workload,
    aggregate,
    parse_workload,
    parse_workloads,
    run_once,
    select_servers,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

PEERS = [
    ("naive_select",),
    ("threads",),
    ("asyncio_protocol",),
    ("asyncio_streams",),
    pytest.param(
        ("asyncio_protocol", "--uvloop"),
        id="uvloop",
        marks=pytest.mark.skipif(find_spec("uvloop") is None, reason="uvloop not installed"),
    ),
]


def _spec(module: str, *extra: str) -> ServerSpec:
    return ServerSpec(module, (sys.executable, "-m", f"muxio.tools.peers.{module}", *extra))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        assert chunk, "server closed early"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("argv", PEERS)
def test_peer_round_trip_and_sigterm(argv: tuple[str, ...]) -> None:
    server = ServerProcess(_spec(*argv), "127.0.0.1", None)
    try:
        port = server.wait_listening()
        message = b"Hello, W\xc3\xb6rld! abc\x00xyz \xff" * 300
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for i in range(0, len(message), 1000):
                sock.sendall(message[i : i + 1000])
            assert _recv_exactly(sock, len(message)) == message.upper()
            sock.sendall(b"q")
            assert _recv_exactly(sock, 1) == b"Q"
        # A connection left open must not keep the server from stopping.
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        time.sleep(0.1)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        idle.close()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_compare_two_peers_writes_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable, "-m", "muxio.tools.compare",
            "--servers", "threads,asyncio-protocol", "--workloads", "10x1024",
            "--duration", "0.5", "--warmup", "0.2", "--repeat", "1", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| 10x1024 | threads |" in proc.stdout
    md = (out / "compare.md").read_text()
    assert "| 10x1024 | threads |" in md and "| 10x1024 | asyncio-protocol |" in md
    data = json.loads((out / "compare.json").read_text())
    assert data["reference"] == "asyncio-protocol"
    rows = {r["server"]: r for r in data["rows"]}
    assert set(rows) == {"threads", "asyncio-protocol"}
    for row in rows.values():
        assert row["ok_runs"] == 1 and row["status"] == "ok"
        assert row["requests_per_s"] > 0
        assert row["cpu_us_per_request"] > 0
        assert row["peak_rss_mib"] > 0
    assert rows["asyncio-protocol"]["cpu_vs_reference"] == 1.0
    assert all(r["server_exit"] == 0 for r in data["runs"])
    if find_spec("matplotlib") is not None:
        assert (out / "compare.png").stat().st_size > 0


@pytest.mark.timeout(60)
def test_naive_select_past_fd_setsize_is_reported_not_raised() -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2500:
        pytest.skip("needs a descriptor limit above 2500")
    rec = run_once(_spec("naive_select"), Workload(5, 1024, idle=1100), duration=0.3, warmup=0.1)
    assert not rec.ok
    assert rec.reason
    assert rec.cpu_us_per_request is None


def test_workload_forms() -> None:
    assert parse_workload("50x1024+5000idle") == Workload(50, 1024, 5000)
    assert parse_workload("100x64k") == Workload(100, 65536)
    assert parse_workload("1x1024").name == "1x1024"
    assert Workload(50, 1024, 5000).name == "50x1024+5000idle"
    assert [w.name for w in parse_workloads("default")] == DEFAULT_WORKLOADS.split(",")
    for bad in ("", "10", "0x1024", "10x0", "10x1024+idle", "ax1"):
        with pytest.raises(UsageError):
            parse_workloads(bad) if bad == "" else parse_workload(bad)


def test_server_selection() -> None:
    assert [s.name for s in select_servers("threads, uvloop" if find_spec("uvloop") else "threads")]
    with pytest.raises(UsageError, match="unknown server"):
        select_servers("nginx")
    names = {s.name for s in select_servers(None)}
    assert {"naive-select", "threads", "asyncio-protocol", "asyncio-streams"} <= names


def test_aggregate_medians_ratios_and_failures() -> None:
    specs = [_spec("a"), _spec("b"), _spec("c")]
    w = Workload(10, 1024)

    def rec(server: str, rps: float, cpu: float) -> RunRecord:
        return RunRecord(w.name, server, 0, True, "", rps, 1.0, 1.0, cpu, 10.0)

    runs = [
        rec("a", 100, 10),
        rec("a", 300, 30),
        rec("a", 200, 20),
        rec("b", 400, 10),
        RunRecord(w.name, "c", 0, False, "server exited with code 1: boom"),
    ]
    rows = {r.server: r for r in aggregate(runs, specs, [w], reference="b")}
    assert rows["a"].requests_per_s == 200 and rows["a"].cpu_us_per_request == 20
    assert rows["a"].cpu_vs_reference == 2.0 and rows["a"].rps_vs_reference == 0.5
    assert rows["b"].cpu_vs_reference == 1.0
    assert rows["c"].ok_runs == 0 and rows["c"].status.startswith("failed: server exited")
    assert rows["c"].cpu_vs_reference is None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_tree_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)
    tree = ProcessTree(os.getpid())
    sum(i * i for i in range(300_000))
    cpu = tree.cpu_seconds()
    assert cpu is not None and cpu > 0
    rss, peak = tree.rss_bytes(), tree.peak_rss_bytes()
    assert rss is not None and peak is not None and rss > 0 and peak > 0
