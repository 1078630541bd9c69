"""Library code names its parameters; only the command line speaks of `--flags`.

An error from `bind_unix(path)` that said "choose another --unix path" would
confuse a program that never had a command line; the CLI, which knows its
flags, is where flags and exit codes are named.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import muxio
from muxio.errors import RuntimeFailure, UsageError

SRC = Path(muxio.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z]")
CLI_SIDE = {"cli.py", "supervisor.py", "launch.py", "pytest_plugin.py"}
"""The command, the `--workers` supervisor it runs (which takes the parsed arguments), `muxio
run`'s body, and the pytest plugin, whose flags are pytest's command line."""


def _library_modules() -> list[Path]:
    return [
        path
        for path in sorted(SRC.rglob("*.py"))
        if path.name not in CLI_SIDE and "tools" not in path.relative_to(SRC).parts
    ]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
        # an attribute docstring: a bare string right after an assignment
        for field in ("body", "orelse"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                for stmt in stmts[1:]:
                    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                        found.add(id(stmt.value))
    return found


def test_no_library_message_names_a_command_line_flag() -> None:
    offenders = []
    for path in _library_modules():
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and FLAG.search(node.value)
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_errors_module_leaves_exit_codes_and_devnull_to_the_cli() -> None:
    text = (SRC / "errors.py").read_text()
    assert "def run_reporting" not in text and "devnull" not in text
    assert not hasattr(UsageError, "exit_code")


def test_bind_unix_errors_name_the_path_not_a_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as too_long:
        muxio.bind_unix(str(tmp_path / ("x" * 200)))
    with pytest.raises(UsageError) as empty:
        muxio.bind_unix("")
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    with pytest.raises(RuntimeFailure) as taken:
        muxio.bind_unix(str(not_a_socket))
    for exc in (too_long, empty, taken):
        assert "--" not in str(exc.value)
    assert "path" in str(too_long.value) and "path" in str(empty.value)


def test_bind_tcp_errors_name_the_host_not_a_flag() -> None:
    with pytest.raises(UsageError) as info:
        muxio.bind_tcp("a" * 64 + ".example", 0)
    assert "host" in str(info.value) and "--" not in str(info.value)


def test_run_reporting_is_the_command_lines() -> None:
    from muxio.cli import run_reporting

    def usage() -> int:
        raise UsageError("bad")

    def failure() -> int:
        raise RuntimeFailure("refused")

    assert run_reporting(usage) == 2
    assert run_reporting(failure) == 1
    assert run_reporting(lambda: 0) == 0
