"""The load generator must measure honestly, catch every wrong or missing reply, and fail cleanly.

The misbehaving servers here are tiny socketserver handlers in the test: a
real socket cannot be made to answer wrongly or late on demand any other way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
from helpers import MUXIO_PATH, serve_process

from muxio.errors import RuntimeFailure, UsageError
from muxio.histogram import percentile, slot_of, slot_range
from muxio.tools.bench import (
    BenchHooks,
    Progress,
    format_summary,
    make_lines,
    make_payloads,
    run_bench,
)
from muxio.tools.bench.config import BadSetting

SRC = MUXIO_PATH


def _bench(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muxio.tools.bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def upper_port() -> Iterator[int]:
    with serve_process("--port", "0", "--service", "upper") as sp:
        yield sp.port


@pytest.fixture(scope="module")
def work_port() -> Iterator[int]:
    with serve_process("--port", "0", "--service", "work", "--offload", "threads") as sp:
        yield sp.port


# -- misbehaving servers -----------------------------------------------------------------


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


class _Lines(socketserver.BaseRequestHandler):
    """A line server; subclasses decide which reply lines go out for the lines received."""

    request: socket.socket

    def setup(self) -> None:
        self.held: list[bytes] = []

    def answer(self, line: bytes) -> list[bytes]:
        return [line.upper()]

    def handle(self) -> None:
        buf = b""
        try:
            while data := self.request.recv(65536):
                *lines, buf = (buf + data).split(b"\n")
                for line in lines:
                    for reply in self.answer(line):
                        self.request.sendall(reply + b"\n")
        except OSError:
            pass


class _Pairs(_Lines):
    """Answers only once two requests are in, in order: needs two in flight to make progress."""

    def answer(self, line: bytes) -> list[bytes]:
        self.held.append(line.upper())
        if len(self.held) < 2:
            return []
        out, self.held = self.held, []
        return out


class _SwappedPairs(_Pairs):
    """Answers every two requests in the wrong order."""

    def answer(self, line: bytes) -> list[bytes]:
        return list(reversed(super().answer(line)))


class _DrainsAfterThree(_Lines):
    """Answers three requests, then ends its side cleanly, whatever is in flight: a drain."""

    def answer(self, line: bytes) -> list[bytes]:
        self.held.append(line)
        if len(self.held) > 3:
            return []
        if len(self.held) == 3:
            self.request.sendall(line.upper() + b"\n")
            self.request.shutdown(socket.SHUT_WR)
            return []
        return [line.upper()]


class _DropsEveryOtherFirst(_Lines):
    """Reads the first request of every other connection, then closes with no answer."""

    seen = 0
    lock = threading.Lock()

    def answer(self, line: bytes) -> list[bytes]:
        if not self.held:
            self.held.append(line)
            with self.lock:
                type(self).seen += 1
                drop = self.seen % 2 == 1
            if drop:
                self.request.close()
                raise OSError("dropped")  # ends handle(): the request was read, never answered
        return [line.upper()]


class _CutsEchoShort(socketserver.BaseRequestHandler):
    """Echo upper, but the third reply of a connection is cut in half and the connection closed."""

    request: socket.socket

    def handle(self) -> None:
        count = 0
        with contextlib.suppress(OSError):
            while data := self.request.recv(64):
                count += 1
                if count == 3:
                    self.request.sendall(data[: len(data) // 2].upper())
                    return
                self.request.sendall(data.upper())


SLOW_REPLY = 0.5


class _SlowFirstReply(_Lines):
    """Holds the first reply of the connection for SLOW_REPLY seconds (the fault under test)."""

    def answer(self, line: bytes) -> list[bytes]:
        if not self.held:
            self.held.append(line)
            time.sleep(SLOW_REPLY)
        return [line.upper()]


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


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


# -- runs against muxio's own services -----------------------------------------------------


@pytest.mark.timeout(30)
def test_json_run_against_upper_has_no_errors(upper_port: int) -> None:
    args = ["--port", str(upper_port), "--connections", "10", "--processes", "2"]
    proc = _bench(*args, "--duration", "0.7", "--warmup", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["errors"]["total"] == 0
    assert result["requests"] > 0
    assert result["requests_per_s"] > 0
    assert result["processes"] == 2
    assert result["connected"] == 10
    for key in ("p50", "p90", "p99", "p999", "max", "mean"):
        assert result["latency_ms"][key] > 0
    lat = result["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]


@pytest.mark.timeout(30)
def test_line_protocol_against_the_work_service(work_port: int) -> None:
    proc = _bench(
        "--port", str(work_port), "--protocol", "line", "--request", "work 0",
        "--request", "hello", "--connections", "4", "--duration", "0.7", "--warmup", "0.2",
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["protocol"] == "line"
    assert result["requests"] > 0 and result["errors"]["total"] == 0


@pytest.mark.timeout(30)
def test_open_loop_line_run_prints_hdr_percentiles(work_port: int) -> None:
    proc = _bench(
        "--port", str(work_port), "--protocol", "line", "--rate", "200", "--connections", "2",
        "--duration", "0.7", "--warmup", "0.2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    latency = next(line for line in proc.stdout.splitlines() if "latency ms" in line)
    for label in ("p50", "p90", "p99", "p99.9", "max", "from when due"):
        assert label in latency
    assert "open loop at 200 req/s per connection" in proc.stdout


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("protocol", "size"), [("echo", "64"), ("echo", "70000"), ("line", "100"), ("line", "1")]
)
def test_pipelined_runs_against_upper_have_no_errors(
    upper_port: int, protocol: str, size: str
) -> None:
    proc = _bench(
        "--port", str(upper_port), "--protocol", protocol, "--size", size, "--pipeline", "8",
        "--connections", "4", "--duration", "0.5", "--warmup", "0.1", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["pipeline"] == 8
    assert result["requests"] > 0 and result["errors"]["total"] == 0


# -- pipelining and the open loop, against servers that expose them ------------------------


@pytest.mark.timeout(30)
def test_pipelined_requests_are_in_flight_together_and_replies_matched_in_order() -> None:
    bench = partial(
        run_bench, protocol="line", requests=[b"a", b"b"], connections=1, processes=1, warmup=0
    )
    with _thread_server(_Pairs) as port:
        paired = bench(port=port, pipeline=2, duration=0.5)
        alone = bench(port=port, duration=3, stall_timeout=0.3)
    assert paired.ok, paired.to_json()
    assert alone.errors.stalls == 1 and alone.requests == 0
    assert "no reply on connection 1 within 0.3 s" in alone.first_error
    with _thread_server(_SwappedPairs) as port:
        swapped = bench(port=port, pipeline=2, duration=3)
    assert swapped.errors.wrong_bytes == 1
    assert swapped.first_error_kind == "wrong_bytes"
    assert "wrong reply on connection 1" in swapped.first_error
    assert "to b'a': expected b'A', got b'B'" in swapped.first_error


@pytest.mark.timeout(30)
def test_reconnect_sends_every_unanswered_pipelined_request_again() -> None:
    bench = partial(
        run_bench, protocol="line", requests=[b"a", b"b", b"c"], pipeline=4, connections=2,
        processes=1, warmup=0,
    )  # fmt: skip
    with _thread_server(_DrainsAfterThree) as port:
        again = bench(port=port, reconnect=True, duration=1.0, stall_timeout=0.3)
        plain = bench(port=port, duration=30)
    assert again.ok, again.to_json()
    # each connection was drained over and over, and every time the load went on
    assert again.reconnects > 4 and again.requests >= 3 * again.reconnects
    assert plain.errors.resets == 2 and plain.requests <= 6
    assert "the server closed connection" in plain.first_error
    assert "request(s) unanswered" in plain.first_error


@pytest.mark.timeout(60)
def test_reconnect_counts_a_request_read_and_dropped_as_lost_and_fails_unless_allowed(
    upper_port: int,
) -> None:
    common = ("--protocol", "line", "--size", "10", "--connections", "4", "--processes", "1",
              "--duration", "0.5", "--warmup", "0", "--reconnect", "--json")  # fmt: skip
    with _thread_server(_DropsEveryOtherFirst) as port:
        strict = _bench("--port", str(port), *common)
        allowed = _bench("--port", str(port), *common, "--allow-lost")
    assert strict.returncode == 1, strict.stderr
    line = _one_line(strict.stderr)
    assert "request(s) lost: the server closed connection" in line, line
    assert "before its first reply" in line and "--allow-lost" in line
    result = json.loads(strict.stdout)
    assert result["lost"] >= 1 and not result["ok"] and result["errors"]["total"] == 0
    assert result["reconnects"] >= result["lost"] and result["requests"] > 0
    assert allowed.returncode == 0, allowed.stderr
    result = json.loads(allowed.stdout)
    assert result["lost"] >= 1 and result["ok"] and result["allow_lost"]
    # a correct server under the same load loses nothing
    correct = _bench("--port", str(upper_port), *common)
    assert correct.returncode == 0, correct.stderr
    assert json.loads(correct.stdout)["lost"] == 0


@pytest.mark.timeout(30)
def test_reconnect_counts_a_reply_cut_short_as_lost_in_the_library_result() -> None:
    with _thread_server(_CutsEchoShort) as port:
        result = run_bench(port=port, size=64, connections=2, processes=1, duration=0.5,
                           warmup=0, reconnect=True)  # fmt: skip
        allowed = run_bench(port=port, size=64, connections=2, processes=1, duration=0.5,
                            warmup=0, reconnect=True, allow_lost=True)  # fmt: skip
    assert result.lost >= 2 and result.reconnects >= result.lost, result.to_json()
    assert "with a reply cut short" in result.first_lost
    assert result.errors.total == 0 and not result.ok
    assert result.to_dict()["lost"] == result.lost
    assert allowed.lost >= 2 and allowed.ok
    assert "lost" in format_summary(result)


def test_allow_lost_needs_reconnect() -> None:
    proc = _bench("--port", "1", "--allow-lost")
    assert proc.returncode == 2
    assert "--allow-lost applies with --reconnect only" in _one_line(proc.stderr)


@pytest.mark.timeout(30)
def test_open_loop_latency_counts_the_wait_of_requests_queued_behind_a_slow_reply() -> None:
    """One reply held 0.5 s: in a closed loop it is one slow request among thousands, but
    at 200 req/s the ~100 requests that fell due meanwhile waited too, and say so."""
    bench = partial(run_bench, protocol="line", connections=1, processes=1, warmup=0, duration=1.5)
    with _thread_server(_SlowFirstReply) as port:
        closed = bench(port=port)
        opened = bench(port=port, rate=200)
    assert closed.ok and opened.ok, (closed.to_json(), opened.to_json())
    slow_ms = SLOW_REPLY * 1000
    assert closed.latency_ms.max >= slow_ms and opened.latency_ms.max >= slow_ms
    assert closed.latency_ms.p90 < slow_ms / 5
    assert opened.latency_ms.p90 >= slow_ms / 5, opened.to_json()
    assert opened.rate == 200


# -- failures: one line, exit 1, never a hang ------------------------------------------------


@pytest.mark.timeout(30)
def test_wrong_reply_is_one_line_exit_1_and_ends_the_run() -> None:
    with _thread_server(_NoUpper) as port:
        proc = _bench(
            "--port", str(port), "--connections", "4", "--duration", "600", "--warmup", "0",
            "--json", timeout=20,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("muxio: wrong reply on connection ")
    assert "expected b'" in line and ", got b'" in line
    result = json.loads(proc.stdout)
    assert result["errors"]["wrong_bytes"] == 4
    assert result["ok"] is False


@pytest.mark.timeout(30)
def test_wrong_line_reply_names_the_request(work_port: int) -> None:
    proc = _bench(
        "--port", str(work_port), "--protocol", "line", "--request", "work 0", "--expect",
        "same", "--connections", "2", "--duration", "600", timeout=20,
    )  # fmt: skip
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert "wrong reply on connection" in line
    assert "to b'work 0': expected b'work 0', got b'WORK 0'" in line


@pytest.mark.timeout(30)
def test_silent_server_is_a_stall_exit_1_within_the_reply_timeout() -> None:
    with _thread_server(_Silent) as port:
        proc = _bench(
            "--port", str(port), "--connections", "3", "--duration", "600", "--warmup", "0",
            "--reply-timeout", "0.5", timeout=20,
        )  # fmt: skip
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert "no reply on connection" in line and "within 0.5 s" in line
    assert "--reply-timeout" in line
    assert "stalls 3" in proc.stdout


@pytest.mark.timeout(30)
def test_closed_port_is_one_line_exit_1() -> None:
    proc = _bench("--port", str(_closed_port()), "--duration", "0.5")
    assert proc.returncode == 1
    assert _one_line(proc.stderr).startswith("muxio: cannot connect")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--connections", "0"], "--connections"),
        (["--port", "70000"], "invalid port"),
        (["--duration", "0"], "--duration 0.0: must be more than 0"),
        (["--processes", "0"], "--processes"),
        (["--pipeline", "0"], "--pipeline"),
        (["--rate", "0"], "--rate 0.0"),
        (["--rate", "inf"], "--rate inf"),
        (["--reply-timeout", "nan"], "--reply-timeout nan"),
        (["--stall-timeout", "-1"], "--stall-timeout -1.0"),
        (["--protocol", "http"], "invalid choice: 'http'"),
        (["--expect", "upper"], "--expect applies to --protocol line only"),
        (["--request", "x"], "--request applies to --protocol line only"),
        (["--protocol", "line", "--request", "a\nb"], "one line, without a newline"),
        (["--protocol", "line", "--expect", "lower"], "invalid choice: 'lower'"),
    ],
)
def test_bad_options_are_one_line_exit_2_before_anything_runs(
    args: list[str], message: str
) -> None:
    # the port is closed: getting past validation would be exit 1, not 2
    proc = _bench("--port", str(_closed_port()), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in _one_line(proc.stderr)
    assert proc.stdout == ""


# -- the library -----------------------------------------------------------------------------


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
def test_api_hooks_and_idle_connections(upper_port: int) -> None:
    hooks = _Recorder()
    result = run_bench(
        port=upper_port, connections=3, idle=20, duration=0.5, warmup=0.3, processes=1,
        hooks=hooks,
    )  # fmt: skip
    assert result.ok, result.to_json()
    assert result.idle_connected == 20
    assert result.alive_at_end == 3
    assert hooks.events.count("start") == hooks.events.count("end") == 1
    assert hooks.events.index("start") < hooks.events.index("end")
    assert "warmup" in hooks.events[: hooks.events.index("start")]
    assert hooks.events[-1] == "done"
    assert json.loads(result.to_json())["errors"]["total"] == 0


def _no_b(request: bytes, reply: bytes) -> str | None:
    return "a B in the reply" if b"B" in reply else None


@pytest.mark.timeout(30)
def test_api_custom_check_judges_each_reply_line(upper_port: int) -> None:
    result = run_bench(
        port=upper_port, protocol="line", requests=[b"a", b"b"], check=_no_b, connections=1,
        processes=1, duration=3, warmup=0,
    )  # fmt: skip
    assert result.errors.wrong_bytes == 1
    assert result.first_error == "wrong reply on connection 1 to b'b': a B in the reply"


def test_api_errors_name_parameters() -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"connections": 0}, "connections"),
        ({"size": 0}, "size"),
        ({"pipeline": 0}, "pipeline"),
        ({"rate": math.nan}, "rate"),
        ({"protocol": "http"}, "protocol"),
        ({"check": _no_b}, "check"),
        ({"protocol": "line", "requests": [b"a\n"]}, "requests"),
        ({"protocol": "line", "requests": []}, "requests"),
    ]
    for kwargs, parameter in cases:
        with pytest.raises(BadSetting) as info:
            run_bench(port=1, **kwargs)  # type: ignore[arg-type]
        assert info.value.parameter == parameter
        assert "--" not in str(info.value)
    with pytest.raises(UsageError):
        run_bench(port=1, size=0)
    with pytest.raises(RuntimeFailure, match="cannot connect"):
        run_bench(port=_closed_port(), duration=0.1)


@pytest.mark.timeout(30)
def test_stalls_and_resets_are_counted_and_end_the_run_early() -> None:
    with _thread_server(_Silent) as port:
        result = run_bench(
            port=port, connections=3, duration=600, warmup=0, processes=1, stall_timeout=0.3
        )
    assert result.errors.stalls == 3
    assert result.requests == 0 and not result.ok
    assert result.first_error_kind == "stalls"
    hooks = _Recorder()
    with _thread_server(_Hangup) as port:
        result = run_bench(
            port=port, connections=3, duration=600, warmup=300, processes=1, hooks=hooks
        )
    assert result.errors.resets == 3
    assert result.alive_at_end == 0
    assert "closed connection" in result.first_error
    assert hooks.events.count("start") == hooks.events.count("end") == 1
    assert hooks.events.index("start") < hooks.events.index("end")


# -- payloads and the histogram --------------------------------------------------------------


def test_payloads_exercise_case_and_non_ascii() -> None:
    for size in (1, 2, 1024, 70000):
        payloads = make_payloads(size, seed=1)
        assert len({len(p) for p in payloads}) == 1 and len(payloads[0]) == size
        assert all(p != p.upper() for p in payloads)
    big = make_payloads(1024, seed=1)[0]
    assert any(b >= 0x80 for b in big)
    assert any(ord("a") <= b <= ord("z") for b in big)


def test_generated_lines_are_one_line_each_of_the_size_asked() -> None:
    for size in (1, 2, 100, 5000):
        for line in make_lines(size, seed=3):
            assert len(line) + 1 == size
            assert b"\n" not in line and b"\r" not in line
    assert any(line != line.upper() for line in make_lines(100, seed=3))


def test_histogram_slots_are_contiguous_and_under_one_percent_wide() -> None:
    previous_high = 0
    for slot in range(0, 40 << 7):
        low, high = slot_range(slot)
        assert low == previous_high  # no gap, no overlap
        assert (high - low) / max(low, 1) <= 1 / 128 or high - low == 1
        assert slot_of(low) == slot_of(high - 1) == slot
        previous_high = high


def test_histogram_percentiles_are_within_one_percent_of_exact() -> None:
    rng = random.Random(5)
    values = [int(rng.lognormvariate(math.log(300_000), 1.0)) for _ in range(20_000)]
    hist: dict[int, int] = {}
    for v in values:
        hist[slot_of(v)] = hist.get(slot_of(v), 0) + 1
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = ordered[math.ceil(q * len(values)) - 1]
        assert abs(percentile(hist, len(values), q) / exact - 1) < 0.01
