"""Run muxio and other server designs side by side under identical load.

Requests per second alone flatter whichever server gets the most CPU, so the
headline number here is the server's CPU time per request, read from the OS
for the server's process tree over exactly the measured window. Each cell of
the table is a median over repeats shown with its spread, so a difference
between servers can be told from noise between runs.

Modules, each importing only those below it: `cli` (the command line) →
`report` → `chart` → `orchestration` (running) → `sampling` (CPU and memory),
`metrics` (medians and spread) → `servers`, `workloads`.
"""

from __future__ import annotations

from .cli import configure_parser, main
from .metrics import CompareReport, Row, RunRecord, Spread, aggregate, pick_reference
from .orchestration import cpu_plan, expected_seconds, machine, run_compare, run_once
from .report import prepare_out_dir, render_markdown, write_outputs
from .sampling import ProcessTree
from .servers import (
    ServerSpec,
    SpecProcess,
    TLSFiles,
    all_servers,
    available_servers,
    make_tls_files,
    select_servers,
)
from .workloads import DEFAULT_WORKLOADS, Workload, parse_workload, parse_workloads

ServerProcess = SpecProcess
"""The name the benchmark scripts and older tests import."""

__all__ = [
    "DEFAULT_WORKLOADS",
    "CompareReport",
    "ProcessTree",
    "Row",
    "RunRecord",
    "ServerProcess",
    "ServerSpec",
    "SpecProcess",
    "Spread",
    "TLSFiles",
    "Workload",
    "aggregate",
    "all_servers",
    "available_servers",
    "configure_parser",
    "cpu_plan",
    "expected_seconds",
    "machine",
    "main",
    "make_tls_files",
    "parse_workload",
    "parse_workloads",
    "pick_reference",
    "prepare_out_dir",
    "render_markdown",
    "run_compare",
    "run_once",
    "select_servers",
    "write_outputs",
]
