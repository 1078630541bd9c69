"""The real engine in front: HAProxy with send-proxy-v2 and health checks over three muxio serve."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServeProcess, free_port, round_trip
from test_workers import established

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
pytestmark = [
    pytest.mark.skipif(
        HAPROXY is None, reason="haproxy is not installed (apt-get install -y haproxy)"
    ),
    pytest.mark.skipif(
        not Path("/proc/net/tcp").exists(), reason="counts connections from Linux's /proc"
    ),
]

CONFIG = """
global
    maxconn 2000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch

frontend front
    bind 127.0.0.1:{port}
    default_backend muxio

backend muxio
    balance roundrobin
    default-server send-proxy-v2 check inter 200ms fall 1 rise 1
{servers}
"""


class HAProxy:
    def __init__(self, config: Path) -> None:
        assert HAPROXY is not None
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            self._queue.put(line)

    def wait_line(self, pattern: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"haproxy never said {pattern!r}: {self.lines!r}")
            with contextlib.suppress(queue.Empty):
                if re.search(pattern, self._queue.get(timeout=left)):
                    return

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[HAProxy, list[ServeProcess], int]]:
    instances = [
        ServeProcess("--port", "0", "--proxy-protocol", "--log-level", "debug") for _ in range(3)
    ]
    proxy = None
    try:
        for sp in instances:
            sp.wait_listening()
        port = free_port()
        servers = "\n".join(
            f"    server m{i} 127.0.0.1:{sp.port}" for i, sp in enumerate(instances, 1)
        )
        config = tmp_path / "haproxy.cfg"
        config.write_text(CONFIG.format(port=port, servers=servers))
        proxy = HAProxy(config)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    assert round_trip(c, b"up") == b"UP"
                break
            except OSError:
                assert proxy.proc.poll() is None, proxy.lines
                assert time.monotonic() < deadline, proxy.lines
                time.sleep(0.05)
        yield proxy, instances, port
    finally:
        if proxy is not None:
            proxy.stop()
        for sp in instances:
            sp.kill()


def test_haproxy_in_front_survives_an_instance_killed_under_load(
    cluster: tuple[HAProxy, list[ServeProcess], int],
) -> None:
    proxy, instances, port = cluster
    # a client with an address of its own: muxio must log it, not HAProxy's
    with socket.socket() as c:
        c.bind(("127.0.0.2", 0))
        c.settimeout(10)
        c.connect(("127.0.0.1", port))
        client_port = c.getsockname()[1]
        assert round_trip(c, b"who am i") == b"WHO AM I"
    pattern = rf"connection from 127\.0\.0\.2:{client_port} via 127\.0\.0\.1:\d+ \(PROXY v2\)"
    deadline = time.monotonic() + 10
    while not any(re.search(pattern, line) for sp in instances for line in sp.lines):
        assert time.monotonic() < deadline, [sp.lines[-5:] for sp in instances]
        time.sleep(0.02)

    load = subprocess.Popen(
        [sys.executable, "-m", "muxio", "bench", "--port", str(port), "--connections", "30",
         "--duration", "6", "--warmup", "0", "--reconnect", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        victim, survivors = instances[0], instances[1:]
        # the victim is serving bench's connections when it dies
        deadline = time.monotonic() + 15
        while established(victim.port) < 5:
            assert time.monotonic() < deadline and load.poll() is None
            time.sleep(0.02)
        victim.proc.send_signal(signal.SIGKILL)
        proxy.wait_line(r"Server muxio/m1 is DOWN")
        assert load.poll() is None, "the kill must land while the load runs"
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    result = json.loads(out)
    assert result["errors"]["wrong_bytes"] == 0, result
    assert result["requests"] > 0
    # traffic went on: the survivors took the victim's clients after it died
    assert result["reconnects"] > 0, json.dumps(result)
    # and every one of bench's connections was still being served at the end
    assert result["alive_at_end"] == 30, json.dumps(result)
    for sp in survivors:
        assert sp.proc.poll() is None
        assert not any("closed a connection" in line for line in sp.lines), sp.lines
