"""The loop's metrics for Prometheus, `muxio top`, and blocked loops as OpenTelemetry spans.

Real processes throughout: a program on muxio's loop serving `/metrics`, a
real Prometheus scraping it (Debian's `prometheus`, skipped with the reason
where missing), `promtool check metrics` on the exposition, `muxio top` in a
pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import MUXIO_PATH, ServeProcess, free_port, one_line, recv_exactly

prometheus_client = pytest.importorskip("prometheus_client", reason="the test extra has it")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from muxio.metrics import histogram_buckets  # noqa: E402

BLOCKER = textwrap.dedent(
    """
    import asyncio, sys, time
    import muxio
    from muxio.metrics import serve_metrics

    async def blocks_every_second() -> None:
        while True:
            time.sleep(float(sys.argv[1]))
            await asyncio.sleep(float(sys.argv[2]))

    async def main() -> None:
        exporter = serve_metrics(asyncio.get_running_loop(), "127.0.0.1", 0)
        print(exporter.port, flush=True)
        await blocks_every_second()

    muxio.run(main(), slow_callback_ms=50)
    """
)


@contextmanager
def blocking_program(tmp_path: Path, block: float = 0.2, every: float = 1.0) -> Iterator[int]:
    """A program whose coroutine blocks the loop `block` s every `every` s; yields its port."""
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(block), str(every)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": MUXIO_PATH},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the program did not print its metrics port"
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(10)


def scrape(port: int, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return str(reply.read().decode())


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_buckets_are_cumulative_and_end_with_every_sample() -> None:
    from muxio.histogram import slot_of

    sparse: dict[int, int] = {}
    for ns in (50_000, 2_000_000, 2_000_000, 300_000_000, 20_000_000_000):
        sparse[slot_of(ns)] = sparse.get(slot_of(ns), 0) + 1
    buckets, total = histogram_buckets(sparse)
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == ("+Inf", 5.0)
    assert dict(buckets)["0.0001"] == 1.0  # 50 µs
    assert dict(buckets)["0.0025"] == 3.0  # and the two 2 ms
    assert dict(buckets)["10.0"] == 4.0  # 20 s is only in +Inf
    assert total == pytest.approx(20.3041, rel=0.01)


def test_the_exposition_names_the_loop_delay_and_the_blocking_coroutine(tmp_path: Path) -> None:
    with blocking_program(tmp_path, block=0.12, every=0.05) as port:
        wait_for(
            lambda: "blocks_every_second" in scrape(port), 20, "a slow site in the metrics"
        )
        text = scrape(port)
    values = samples(text)
    assert values[("muxio_loop_delay_seconds_count", ())] > 0
    assert values[("muxio_loop_iterations_total", ())] > 0
    assert 0 < values[("muxio_loop_utilisation", ())] <= 1
    (site,) = [dict(k[1])["site"] for k in values if k[0] == "muxio_loop_slow_site_iterations_total"
               and "blocks_every_second" in dict(k[1])["site"]]
    assert "blocker.py" in site
    blocked = values[("muxio_loop_slow_site_blocked_seconds_total", (("site", site),))]
    assert blocked >= 0.1
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_scrape_answers_while_the_loop_is_blocked(tmp_path: Path) -> None:
    with blocking_program(tmp_path, block=3.0, every=0.01) as port:
        wait_for(lambda: samples(scrape(port)).get(("muxio_loop_blocked_seconds", ()), 0) > 0.5,
                 20, "a scrape during a stall")
        values = samples(scrape(port))
    assert values[("muxio_loop_responding", ())] == 0.0
    assert values[("muxio_loop_blocked_seconds", ())] > 0.5


def test_serve_metrics_counts_connections_and_bytes() -> None:
    sp = ServeProcess("--port", "0", "--metrics", "127.0.0.1:0")
    try:
        sp.wait_listening()
        url = sp.wait_line(r"metrics on (http://\S+)").group(1)
        with sp.connect() as sock:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"HELLO"
            with urllib.request.urlopen(url, timeout=10) as reply:
                values = samples(reply.read().decode())
    finally:
        sp.kill()
    server = (("source", "server"),)
    assert values[("muxio_connections_accepted_total", server)] == 1
    assert values[("muxio_connections_open", server)] == 1
    assert values[("muxio_received_bytes_total", server)] == 5
    assert values[("muxio_sent_bytes_total", server)] == 5


@pytest.mark.parametrize("value", ["9464", "localhost:", ":9464", "127.0.0.1:99999"])
def test_a_bad_metrics_address_is_one_line_and_exit_2(value: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "muxio", "serve", "--metrics", value],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert "--metrics" in one_line(out.stderr.encode())


def test_top_on_nothing_listening_is_one_line_and_exit_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    out = subprocess.run(
        [sys.executable, "-m", "muxio", "top", f"127.0.0.1:{port}", "--once"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1
    assert "--metrics" in one_line(out.stderr.encode())


def test_top_shows_the_site_of_a_coroutine_that_sleeps_on_the_loop_every_second(
    tmp_path: Path,
) -> None:
    pytest.importorskip("rich", reason="muxio top's live view needs rich (the bench extra)")
    with blocking_program(tmp_path, block=0.2, every=1.0) as port:
        pid, fd = pty.fork()
        if pid == 0:  # the child: muxio top on the terminal
            os.environ.update(PYTHONPATH=MUXIO_PATH, COLUMNS="160", LINES="40", TERM="xterm")
            os.execv(sys.executable, [sys.executable, "-m", "muxio", "top",
                                      f"127.0.0.1:{port}", "--interval", "0.5"])
        screen = b""
        try:
            deadline = time.monotonic() + 30
            while b"blocks_every_second" not in screen and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    try:
                        screen += os.read(fd, 65536)
                    except OSError:
                        break
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(fd)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", screen).decode(errors="replace")
    assert "blocks_every_second" in text, text[-2000:]
    assert "utilisation" in text and "delay p50" in text


SPAN_PROGRAM = textwrap.dedent(
    """
    import asyncio, json, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import muxio

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    async def hogs_the_loop() -> None:
        await asyncio.sleep(0.05)
        before = time.time_ns()
        time.sleep(0.3)
        print(json.dumps({"before": before}), flush=True)

    muxio.run(hogs_the_loop(), slow_callback_ms=100)
    for span in exporter.get_finished_spans():
        print(json.dumps({"name": span.name, "start": span.start_time, "end": span.end_time,
                          "attributes": dict(span.attributes)}))
    """
)


def test_a_blocked_loop_becomes_a_span_back_dated_to_when_it_began(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the test extra has opentelemetry-sdk")
    script = tmp_path / "spans.py"
    script.write_text(SPAN_PROGRAM)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": MUXIO_PATH},
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    before = records[0]["before"]
    spans = [r for r in records[1:] if r["name"] == "muxio.loop.blocked"]
    assert len(spans) == 1, records
    span = spans[0]
    assert "hogs_the_loop" in span["attributes"]["muxio.loop.site"]
    assert span["attributes"]["muxio.loop.blocked_ms"] >= 300
    assert span["start"] <= before  # it began before the sleep did, not when it was reported
    assert span["end"] - span["start"] >= 0.3e9


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: muxio
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="needs Prometheus (apt-get install -y prometheus)")
def test_prometheus_scrapes_the_loop_delay_histogram(tmp_path: Path) -> None:
    with blocking_program(tmp_path, block=0.12, every=0.2) as port:
        (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=port))
        web = free_port()
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            query = urllib.parse.quote("muxio_loop_delay_seconds_bucket")
            url = f"http://127.0.0.1:{web}/api/v1/query?query={query}"

            def has_buckets() -> bool:
                try:
                    with urllib.request.urlopen(url, timeout=5) as reply:
                        body = json.loads(reply.read())
                except OSError:
                    return False
                return body.get("status") == "success" and len(body["data"]["result"]) > 1

            wait_for(has_buckets, 60, "Prometheus to hold the loop delay histogram")
            with urllib.request.urlopen(url, timeout=5) as reply:
                result = json.loads(reply.read())["data"]["result"]
        finally:
            prom.terminate()
            prom.wait(20)
    bounds = {r["metric"]["le"] for r in result}
    assert {"0.001", "0.1", "+Inf"} <= bounds
