"""compare must measure real servers and survive the ones that fall over."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
from helpers import MUXIO_PATH

from muxio.errors import UsageError
from muxio.tools.compare import (
    DEFAULT_WORKLOADS,
    CompareReport,
    ProcessTree,
    RunRecord,
    ServerProcess,
    ServerSpec,
    Spread,
    Workload,
    aggregate,
    parse_workload,
    parse_workloads,
    run_once,
    select_servers,
)
from muxio.tools.compare.chart import plot_png
from muxio.tools.compare.cli import standalone
from muxio.tools.compare.report import render_markdown

SRC = MUXIO_PATH

_META = {
    "python": "3", "platform": "x", "server_cpu": None, "load_processes": 2, "load_cpus": [],
    "duration": 1.0, "warmup": 0.0, "repeat": 3, "cpu_source": "psutil",
}  # fmt: skip

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


def _png_contents(path: Path) -> list[str]:
    """The panel list compare keeps in its PNG: 'TITLE [N error bars]' per panel."""
    from PIL import Image

    with Image.open(path) as img:
        return str(img.info["Description"]).splitlines()


@pytest.mark.timeout(90)
def test_compare_reports_spread_and_charts_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"  # created by compare
    workloads = ["4x1024", "2x64k", "2x1024+20idle"]
    proc = subprocess.run(
        [
            sys.executable, "-m", "muxio.tools.compare",
            "--servers", "threads,asyncio-protocol", "--workloads", ",".join(workloads),
            "--duration", "0.3", "--warmup", "0.1", "--repeat", "2", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=80,
        env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    plan = "\n".join(err[:2])
    assert "2 servers (threads, asyncio-protocol) x 3 workloads" in plan
    assert "x 2 repeats = 12 runs" in plan and "in all" in plan
    assert err[2].startswith("[1/12] ")  # the plan came before the first run
    for text in (proc.stdout, (out / "compare.md").read_text()):
        assert "| n | req/s |" in text
        for w in ("4x1024", "2x65536", "2x1024+20idle"):
            line = next(ln for ln in text.splitlines() if ln.startswith(f"| {w} | threads |"))
            # median (min-max) of req/s over 2/2 successful runs
            assert re.match(
                rf"\| {re.escape(w)} \| threads \| 2/2 \| [\d,]+ \([\d,]+-[\d,]+\) \|", line
            )
    data = json.loads((out / "compare.json").read_text())
    assert data["reference"] == "asyncio-protocol"
    assert len(data["rows"]) == 6 and len(data["runs"]) == 12
    for row in data["rows"]:
        assert row["ok_runs"] == 2 and row["status"] == "ok", row
        for metric in ("requests_per_s", "p99_ms", "cpu_us_per_request", "peak_rss_mib"):
            s = row["spread"][metric]
            assert s["n"] == 2 and s["stdev"] is not None
            assert 0 < s["min"] <= s["median"] == row[metric] <= s["max"]
    assert all(r["server_exit"] == 0 for r in data["runs"])
    # compare.json reads back into the report it was written from (to redraw or re-render)
    assert CompareReport.from_dict(data).to_dict() == data
    if find_spec("matplotlib") is not None:
        panels = _png_contents(out / "compare.png")
        for w in ("4x1024", "2x65536", "2x1024+20idle"):
            mine = [p for p in panels if p.startswith(f"{w}: ")]
            assert len(mine) == 2 and all(p.endswith("[2 error bars]") for p in mine), panels


def _compare(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = standalone(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


BAD_OPTIONS = [
    (["--repeat", "0"], "--repeat 0 must be at least 1"),
    (["--duration", "-1"], "--duration -1 must be a positive number"),
    (["--duration", "nan"], "--duration nan must be a positive number"),
    (["--duration", "soon"], "--duration: invalid float value"),
    (["--warmup", "-0.5"], "--warmup -0.5 must be 0 or more"),
    (["--processes", "0"], "--processes 0 must be at least 1"),
    (["--workloads", "10x"], "--workloads: cannot read workload '10x'"),
    (["--workloads", ","], "--workloads: no workload given"),
    (["--servers", "nginx"], "--servers: unknown server 'nginx'; choose from"),
    (["--servers", ""], "--servers: no server named"),
    (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls", "--servers", "threads"], "--servers: server threads cannot run here"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_OPTIONS)
def test_bad_options_exit_2_with_one_line_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = _compare([*argv, "--out", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not out.exists()  # checked after the options, and nothing ran


@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_unusable_out_exits_2_before_any_server_starts(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "sub" if where == "under-a-file" else blocker
    argv = ["--servers", "threads", "--workloads", "1x1024", "--duration", "60", "--out", str(out)]
    code, err = _compare(argv, capsys)
    assert code == 2
    assert err.startswith(f"muxio: --out: cannot write to {out}: ") and err.count("\n") == 1
    assert "runs" not in err  # no plan: the run never started
    assert blocker.read_text() == "not a directory"


@pytest.mark.timeout(60)
def test_naive_select_past_fd_setsize_is_reported_not_raised() -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2500:
        pytest.skip("needs a descriptor limit above 2500")
    # The naive server listens with a backlog of 1024, so once 2,100 connections have been
    # established it has accepted more than 1,024 of them, whatever the machine's load: the
    # crash happens before the measurement starts, not inside a short window.
    rec = run_once(_spec("naive_select"), Workload(5, 1024, idle=2100), duration=0.3, warmup=0.1)
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
    assert rows["a"].spread["requests_per_s"] == Spread(
        n=3, median=200, min=100, max=300, stdev=100
    )
    assert rows["b"].spread["cpu_us_per_request"].stdev is None  # one run has no spread
    assert not rows["c"].spread
    report = CompareReport(meta=_META, reference="b", rows=list(rows.values()), runs=runs)
    md = render_markdown(report)
    assert "| 10x1024 | a | 3/3 | 200 (100-300) | 1.00 (1.00-1.00) | 20.0 (10.0-30.0) |" in md
    assert "| 10x1024 | b | 1/1 | 400 | 1.00 | 10.0 |" in md
    assert "| 10x1024 | c | 0/1 | — | — | — |" in md


@pytest.mark.skipif(find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_chart_shows_a_failed_cell_beside_the_error_bars_of_the_others(tmp_path: Path) -> None:
    w = Workload(10, 1024)
    runs = [
        RunRecord(w.name, "a", i, True, "", rps, 1.0, 1.0, 10.0, 10.0)
        for i, rps in enumerate((100, 300))
    ] + [RunRecord(w.name, "b", 0, False, "server exited with code 1: boom")]
    specs = [_spec("a"), _spec("b")]
    meta = {**_META, "servers": ["a", "b"], "workloads": [w.name], "repeat": 2}
    rows = aggregate(runs, specs, [w], reference="a")
    report = CompareReport(meta=meta, reference="a", rows=rows, runs=runs)
    assert plot_png(report, tmp_path / "c.png") is None
    assert _png_contents(tmp_path / "c.png") == [
        "10x1024: requests/s (higher is better) [1 error bars]",
        "10x1024: server CPU µs per request (lower is better) [1 error bars]",
    ]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_tree_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)
    tree = ProcessTree(os.getpid())
    sum(i * i for i in range(300_000))
    cpu = tree.cpu_seconds()
    assert cpu is not None and cpu > 0
    rss, peak = tree.rss_bytes(), tree.peak_rss_bytes()
    assert rss is not None and peak is not None and rss > 0 and peak > 0
