"""`muxio bench`: a load generator that checks every reply.

Split by concern, each module importing only those below it:
`cli` (flags, exit codes) -> `report` (what a person sees) -> `orchestration`
(`run_bench`: settings, probe, worker processes, totals) -> `worker` (the
per-process load loop) -> `workload` (payloads, checks), `metrics`
(histogram, result), `config` (what a worker is told).
"""

from __future__ import annotations

from .cli import configure_parser, main, standalone
from .config import BadSetting, Check, TLSOptions
from .metrics import BenchResult, ErrorCounts, LatencySummary, Progress
from .orchestration import BenchHooks, default_processes, run_bench
from .report import format_summary
from .worker import raise_fd_limit
from .workload import CHECKS, expect_any, expect_same, expect_upper, make_lines, make_payloads

__all__ = [
    "CHECKS",
    "BadSetting",
    "BenchHooks",
    "BenchResult",
    "Check",
    "ErrorCounts",
    "LatencySummary",
    "Progress",
    "TLSOptions",
    "configure_parser",
    "default_processes",
    "expect_any",
    "expect_same",
    "expect_upper",
    "format_summary",
    "main",
    "make_lines",
    "make_payloads",
    "raise_fd_limit",
    "run_bench",
    "standalone",
]
