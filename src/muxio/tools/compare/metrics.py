"""From runs to table cells: the median of each cell and how far its repeats spread.

A median alone hid that two repeats of one cell differed by 2x; every cell
carries its repeat count, range and standard deviation so a reader can tell a
difference between servers from noise between runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .servers import ServerSpec
from .workloads import Workload

METRICS = ("requests_per_s", "p99_ms", "cpu_us_per_request", "peak_rss_mib")


@dataclass
class RunRecord:
    """One server under one workload once; numbers are None when the run failed."""

    workload: str
    server: str
    repeat: int
    ok: bool
    reason: str = ""
    requests_per_s: float | None = None
    p99_ms: float | None = None
    cpu_seconds: float | None = None
    cpu_us_per_request: float | None = None
    peak_rss_mib: float | None = None
    server_exit: int | None = None
    bench: dict[str, Any] | None = None


@dataclass(frozen=True)
class Spread:
    """One metric over a cell's successful repeats."""

    n: int
    median: float
    min: float
    max: float
    stdev: float | None
    """None below two values: one run has no spread to speak of."""

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        return cls(
            n=len(vals),
            median=round(statistics.median(vals), 3),
            min=round(min(vals), 3),
            max=round(max(vals), 3),
            stdev=round(statistics.stdev(vals), 3) if len(vals) > 1 else None,
        )

    @property
    def relative(self) -> float | None:
        """(max - min) / median: how much of the median the repeats disagree by."""
        return (self.max - self.min) / self.median if self.median else None


@dataclass
class Row:
    """One cell of the table: a server under a workload, over its repeats."""

    workload: str
    server: str
    runs: int
    ok_runs: int
    requests_per_s: float | None
    p99_ms: float | None
    cpu_us_per_request: float | None
    peak_rss_mib: float | None
    cpu_vs_reference: float | None = None
    rps_vs_reference: float | None = None
    status: str = "ok"
    spread: dict[str, Spread] = field(default_factory=dict)
    """Per metric name in METRICS, over the successful runs; medians are the fields above."""


@dataclass
class CompareReport:
    meta: dict[str, Any]
    reference: str | None
    rows: list[Row] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "reference": self.reference,
            "rows": [asdict(r) for r in self.rows],
            "runs": [asdict(r) for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareReport:
        """Read back `to_dict()` (compare.json), to redraw or re-render a finished run."""
        rows = [
            Row(**{**r, "spread": {k: Spread(**v) for k, v in r.get("spread", {}).items()}})
            for r in data["rows"]
        ]
        runs = [RunRecord(**r) for r in data["runs"]]
        return cls(meta=data["meta"], reference=data["reference"], rows=rows, runs=runs)

    def rows_for(self, workload: str) -> list[Row]:
        return [r for r in self.rows if r.workload == workload]

    def row(self, workload: str, server: str) -> Row | None:
        return next((r for r in self.rows if r.workload == workload and r.server == server), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def pick_reference(servers: Sequence[ServerSpec]) -> str | None:
    """What the ratios are against: uvloop if present, else asyncio, else the first server."""
    names = [s.name for s in servers]
    for preferred in ("uvloop", "asyncio-protocol"):
        if preferred in names:
            return preferred
    return names[0] if names else None


def _cell(workload: str, server: str, mine: Sequence[RunRecord]) -> Row:
    good = [r for r in mine if r.ok]
    spread = {}
    for metric in METRICS:
        s = Spread.of([getattr(r, metric) for r in good])
        if s is not None:
            spread[metric] = s

    def median(metric: str) -> float | None:
        return spread[metric].median if metric in spread else None

    row = Row(
        workload,
        server,
        runs=len(mine),
        ok_runs=len(good),
        requests_per_s=median("requests_per_s"),
        p99_ms=median("p99_ms"),
        cpu_us_per_request=median("cpu_us_per_request"),
        peak_rss_mib=median("peak_rss_mib"),
        spread=spread,
    )
    failed = [r for r in mine if not r.ok]
    if failed and not good:
        row.status = f"failed: {failed[0].reason}"
    elif failed:
        row.status = f"{len(good)}/{len(mine)} ok; failed: {failed[0].reason}"
    return row


def aggregate(
    runs: Sequence[RunRecord],
    servers: Sequence[ServerSpec],
    workloads: Sequence[Workload],
    reference: str | None,
) -> list[Row]:
    """One row per server and workload that ran, in the order given; ratios of medians."""
    rows: list[Row] = []
    for w in workloads:
        block = []
        for s in servers:
            mine = [r for r in runs if r.workload == w.name and r.server == s.name]
            if mine:
                block.append(_cell(w.name, s.name, mine))
        ref = next((r for r in block if r.server == reference and r.ok_runs), None)
        for row in block:
            if ref is not None and row.ok_runs:
                row.cpu_vs_reference = _ratio(row.cpu_us_per_request, ref.cpu_us_per_request)
                row.rps_vs_reference = _ratio(row.requests_per_s, ref.requests_per_s)
        rows += block
    return rows
