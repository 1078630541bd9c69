"""conformance/peer_plugin.py: the loop a peer's unchanged tests get, and the proof of it.

A real pytest runs in a subprocess on a tiny peer suite written to a temporary
directory; the plugin's JSON report is what peer_suites.py compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import MUXIO_PATH

ROOT = Path(__file__).resolve().parent.parent

PEER_TESTS = """
import asyncio
import unittest


def test_asyncio_run():
    async def main():
        return type(asyncio.get_running_loop()).__module__
    assert asyncio.run(main()).startswith(EXPECTED)


def test_reset_policy_gets_it_back():
    asyncio.set_event_loop_policy(None)
    loop = asyncio.new_event_loop()
    try:
        assert type(loop).__module__.startswith(EXPECTED)
    finally:
        loop.close()


class Isolated(unittest.IsolatedAsyncioTestCase):
    async def test_loop(self):
        self.assertTrue(type(asyncio.get_running_loop()).__module__.startswith(EXPECTED))


def test_fails():
    raise ValueError("first line\\nsecond line")


@unittest.skip("not here")
def test_skipped():
    pass
"""

FOREIGN = """
import asyncio


def test_explicit_selector_loop():
    asyncio.SelectorEventLoop().close()
"""


def run_peer(tmp_path: Path, loop: str, source: str, expected: str) -> tuple[int, dict[str, Any]]:
    (tmp_path / "test_peer.py").write_text(f"EXPECTED = {expected!r}\n" + source)
    report = tmp_path / "report.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "conformance"), MUXIO_PATH])
    env["MUXIO_PEER_LOOP"] = loop
    env["MUXIO_PEER_REPORT"] = str(report)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "peer_plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            "test_peer.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.exists(), proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(report.read_text())
    return proc.returncode, data


@pytest.mark.parametrize(("loop", "module"), [("muxio", "muxio."), ("asyncio", "asyncio.")])
def test_every_loop_is_the_chosen_one(tmp_path: Path, loop: str, module: str) -> None:
    rc, data = run_peer(tmp_path, loop, PEER_TESTS, module)
    tests = data["tests"]
    outcomes = {tid.split("::", 1)[1]: t["outcome"] for tid, t in tests.items()}
    assert outcomes == {
        "test_asyncio_run": "passed",
        "test_reset_policy_gets_it_back": "passed",
        "Isolated::test_loop": "passed",
        "test_fails": "failed",
        "test_skipped": "skipped",
    }
    assert tests["test_peer.py::test_fails"]["detail"] == "ValueError: first line"
    assert data["foreign_loops"] == {} and data["problems"] == []
    assert sum(data["loops_made"].values()) == 3
    assert all(name.startswith(module) for name in data["loops_made"])
    assert rc == 1  # test_fails


def test_a_foreign_loop_fails_the_session(tmp_path: Path) -> None:
    rc, data = run_peer(tmp_path, "muxio", FOREIGN, "")
    assert data["tests"]["test_peer.py::test_explicit_selector_loop"]["outcome"] == "passed"
    assert data["foreign_loops"] == {
        "test_peer.py::test_explicit_selector_loop": ["asyncio.unix_events._UnixSelectorEventLoop"]
    }
    assert data["problems"]
    assert rc == 1
