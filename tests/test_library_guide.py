"""Every example in docs/library.md runs as written and ends by itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MUXIO_PATH

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "library.md"
BLOCK = re.compile(r"```python\n# example: (?P<name>[\w-]+)\n(?P<code>.*?)```", re.S)


EXPECTED = {
    "chat": "2 got: b'hello from 1\\n'",
    "http": "two responses on one connection",
    "client": "echoed: b'ping'",
    "offload": "fib(20) = 6765",
    "serve": "drain: complete",
    "poller": "select -> select",
    "stats": "slow_iterations 0",
}


def examples() -> dict[str, str]:
    return {m["name"]: m["code"] for m in BLOCK.finditer(GUIDE.read_text())}


def test_guide_has_every_promised_example() -> None:
    assert set(examples()) >= {"chat", "http", "client", "offload", "serve", "poller", "stats"}


@pytest.mark.parametrize("name", sorted(examples()))
def test_guide_example_runs(name: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=MUXIO_PATH)
    proc = subprocess.run(
        [sys.executable, "-c", examples()[name]],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert EXPECTED[name] in proc.stdout, proc.stdout
