"""The benchmark scripts must start, explain themselves, and print the promised shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from helpers import MUXIO_PATH

ROOT = Path(__file__).resolve().parents[1]
HTTP_COMPARE = ROOT / "benchmarks" / "http_compare.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([MUXIO_PATH, env.get("PYTHONPATH", "")])
    return env


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HTTP_COMPARE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


def test_http_compare_help_names_the_servers_and_options() -> None:
    out = _run("--help", timeout=30)
    assert out.returncode == 0, out.stderr
    for word in ("--repeat", "--json", "aiohttp-asyncio", "aiohttp-muxio"):
        assert word in out.stdout


def test_http_compare_rejects_an_unknown_server_in_one_line() -> None:
    out = _run("--servers", "nginx", "--repeat", "1", timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "unknown server 'nginx'" in out.stderr


@pytest.mark.timeout(60)
def test_http_compare_one_short_run_reports_requests_cpu_and_no_errors() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    if find_spec("aiohttp") is None:
        pytest.skip("aiohttp is not installed (pip install aiohttp)")
    out = _run(
        "--servers",
        "aiohttp-muxio",
        "--repeat",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--connections",
        "4",
        "--json",
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["meta"]["repeat"] == 1
    [row] = report["rows"]
    assert row["server"] == "aiohttp-muxio"
    assert row["ok_runs"] == 1
    assert row["errors"] == 0
    assert row["requests_per_s"] > 0
    assert row["cpu_us_per_request"] > 0
    [run] = report["runs"]
    assert run["ok"] and run["requests"] > 0


def test_http_compare_without_wrk_says_how_to_install_it(tmp_path: Path) -> None:
    env = _env()
    env["PATH"] = str(tmp_path)  # an empty directory: no wrk on this PATH
    out = subprocess.run(
        [sys.executable, str(HTTP_COMPARE), "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "muxio: wrk is not installed; apt-get install -y wrk"


CALLGRIND = ROOT / "benchmarks" / "callgrind_per_request.py"


def test_callgrind_script_help_and_unknown_server_are_one_line_answers() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(CALLGRIND), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
            check=False,
        )

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "--requests" in helped.stdout and "--keep" in helped.stdout
    bad = run("--servers", "nginx")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("muxio: unknown server 'nginx'")
    assert bad.stderr.strip().count("\n") == 0
