"""The conformance script: runs CPython's asyncio tests on a loop and reports differences.

Each test runs the real script in a subprocess on ``test_context`` (one test,
well under a second per loop), so the whole file stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "conformance" / "asyncio_suite.py"
CONTEXT_TEST = "test_context.DecimalContextTest.test_asyncio_task_decimal_context"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("test.test_asyncio") is None,
    reason="this Python ships without the test package",
)


def run_script(
    *args: str, cwd: Path | None = None, pythonpath: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (pythonpath, str(Path(__file__).resolve().parent)) if p
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or ROOT,
        env=env,
    )


def test_same_loop_on_both_sides_reports_no_difference_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = run_script(
        "--modules", "test_context", "--loop", "asyncio", "--against", "asyncio",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("test_context"))
    assert row.split()[:3] == ["test_context", "1", "1"]
    assert "Every test that passes on asyncio passes" in proc.stdout
    data = json.loads(out.read_text())
    for side in ("loop", "against"):
        record = data["results"][side][CONTEXT_TEST]
        assert record["outcome"] == "pass"
        assert record["loop_used"] is True
    assert data["regressions"] == []


def test_broken_loop_is_reported_as_a_difference_and_exits_1() -> None:
    proc = run_script(
        "--modules", "test_context", "--loop", "conformance_loops:refusing", "--against", "asyncio",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{CONTEXT_TEST}: error" in proc.stdout
    assert "this loop refuses tasks" in proc.stdout


def test_excluded_test_is_reported_as_excluded_not_as_a_failure(tmp_path: Path) -> None:
    excl = tmp_path / "excl.py"
    excl.write_text('EXCLUSIONS = {"test_context.*": "refuses tasks on purpose"}\n')
    out = tmp_path / "r.json"
    proc = run_script(
        "--modules", "test_context", "--loop", "conformance_loops:refusing", "--against", "asyncio",
        "--exclusions", str(excl), "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())["results"]["loop"][CONTEXT_TEST]
    assert record == {
        "id": CONTEXT_TEST,
        "outcome": "excluded",
        "detail": "refuses tasks on purpose",
        "loop_used": True,
    }


def test_exclusion_without_reason_is_a_usage_error(tmp_path: Path) -> None:
    excl = tmp_path / "excl.py"
    excl.write_text('EXCLUSIONS = {"test_context.*": ""}\n')
    proc = run_script("--modules", "test_context", "--exclusions", str(excl), "--loop", "asyncio")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "has no reason" in proc.stderr


def test_hanging_loop_is_reported_as_hung_without_hanging_the_run() -> None:
    proc = run_script(
        "--modules", "test_context", "--loop", "conformance_loops:hanging", "--against", "asyncio",
        "--test-timeout", "2",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{CONTEXT_TEST}: hung" in proc.stdout
    assert "run_until_complete" in proc.stdout


def test_loop_that_cannot_be_created_fails_once_with_exit_1() -> None:
    proc = run_script("--modules", "test_context", "--loop", "conformance_loops:broken")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        "error: loop 'conformance_loops:broken' cannot be created: OSError('no poller available')\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loop", "nosuchloop"], "unknown loop 'nosuchloop'"),
        (["--loop", "asyncio", "--modules", "test_nosuch"], "unknown module 'test_nosuch'"),
        (["--loop", "asyncio", "--modules", "test_base_events"], "is not run"),
        (["--loop", "nosuchmodule_xyz:factory"], "cannot be imported"),
        (["--jobs", "x"], "invalid int value"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = run_script(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_without_test_package_is_skipped_cleanly(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "test").mkdir(parents=True)
    (fake / "test" / "__init__.py").write_text("")
    proc = run_script("--loop", "asyncio", pythonpath=str(fake))
    assert proc.returncode == 0
    assert "ships without the 'test' package" in proc.stderr
