"""The comparison as people read it: a markdown table (also the console output) and files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from muxio.errors import UsageError

from .chart import plot_png
from .metrics import CompareReport, Row, Spread


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _cell(row: Row, metric: str, spec: str) -> str:
    """'median (min-max)'; the median alone when one run is all there is."""
    s: Spread | None = row.spread.get(metric)
    if s is None:
        return "—"
    if s.n < 2:
        return f"{s.median:{spec}}"
    return f"{s.median:{spec}} ({s.min:{spec}}-{s.max:{spec}})"


def render_markdown(report: CompareReport) -> str:
    m = report.meta
    ref = report.reference or "reference"
    pin = (
        f"server pinned to CPU {m['server_cpu']}, load generator ({m['load_processes']} "
        f"process(es)) on CPU {','.join(map(str, m['load_cpus']))}"
        if m["server_cpu"] is not None
        else "no CPU pinning (one CPU available)"
    )
    lines = [
        f"Python {m['python']} on {m['platform']}; {pin}.",
        f"{m['duration']:g} s measured after {m['warmup']:g} s warmup, {m['repeat']} repeat(s); "
        f"server CPU time from {m['cpu_source']}.",
        "Each cell: median (min-max) over the n successful runs; the ratios are of medians; "
        "standard deviations are in compare.json.",
        "",
        f"| workload | server | n | req/s | p99 ms | CPU µs/req | CPU/req vs {ref} "
        f"| req/s vs {ref} | peak RSS MiB | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.rows:
        status = r.status.replace("|", "/")
        lines.append(
            f"| {r.workload} | {r.server} | {r.ok_runs}/{r.runs} "
            f"| {_cell(r, 'requests_per_s', ',.0f')} | {_cell(r, 'p99_ms', '.2f')} "
            f"| {_cell(r, 'cpu_us_per_request', '.1f')} "
            f"| {_fmt(r.cpu_vs_reference, '.2f', 'x')} | {_fmt(r.rps_vs_reference, '.2f', 'x')} "
            f"| {_cell(r, 'peak_rss_mib', '.1f')} | {status} |"
        )
    if m.get("interrupted"):
        lines += ["", "Interrupted: the table holds only the runs that finished."]
    return "\n".join(lines) + "\n"


def prepare_out_dir(path: Path) -> Path:
    """Create `path` if needed and prove a file can be written there, before any run."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".muxio-compare-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"cannot write to {path}: {exc.strerror or exc}; pick a writable directory"
        ) from None
    return path


def write_outputs(report: CompareReport, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Write compare.md, compare.json and compare.png; returns the files and any notes."""
    prepare_out_dir(out_dir)
    md, js, png = out_dir / "compare.md", out_dir / "compare.json", out_dir / "compare.png"
    md.write_text(render_markdown(report), encoding="utf-8")
    js.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    written = [md, js]
    notes = []
    why_not = plot_png(report, png)
    if why_not:
        notes.append(why_not)
    else:
        written.append(png)
    return written, notes
