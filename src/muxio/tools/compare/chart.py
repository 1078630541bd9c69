"""compare.png: every workload, every server, with the spread over repeats drawn.

One row of panels per workload (its own scale: 64 KiB requests and idle
connections are not on the 1 KiB curve), bars at the median and error bars
from the fastest to the slowest repeat, each repeat as a dot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .metrics import CompareReport
from .workloads import parse_workload

_PANELS = (
    ("requests_per_s", "requests/s (higher is better)"),
    ("cpu_us_per_request", "server CPU µs per request (lower is better)"),
)


def _panel(ax: Any, report: CompareReport, workload: str, metric: str, colors: list[Any]) -> None:
    servers: list[str] = report.meta["servers"]
    for i, server in enumerate(servers):
        row = report.row(workload, server)
        s = row.spread.get(metric) if row is not None else None
        if s is None:
            ax.text(0, i, "  failed" if row is not None else "  not run", va="center",
                    fontsize="small", color="firebrick")  # fmt: skip
            continue
        ax.barh(i, s.median, color=colors[i % len(colors)], alpha=0.8, height=0.7)
        ax.errorbar(
            s.median, i, xerr=[[s.median - s.min], [s.max - s.median]],
            fmt="none", ecolor="black", capsize=3, linewidth=1,
        )  # fmt: skip
        runs = [getattr(r, metric) for r in report.runs
                if r.workload == workload and r.server == server and r.ok]  # fmt: skip
        ax.plot([v for v in runs if v is not None], [i] * len(runs), "o", color="black",
                markersize=2.5, alpha=0.7)  # fmt: skip
    ax.set_yticks(range(len(servers)), servers, fontsize="small")
    ax.set_ylim(len(servers) - 0.5, -0.5)
    ax.set_xlim(left=0)
    ax.grid(True, axis="x", alpha=0.3)


def _contents(fig: Any) -> str:
    """What was drawn, panel by panel, kept in the PNG so a reader (or a test) can check."""
    from matplotlib.container import ErrorbarContainer

    return "\n".join(
        f"{ax.get_title()} [{sum(isinstance(c, ErrorbarContainer) for c in ax.containers)} "
        "error bars]"
        for ax in fig.axes
    )


def plot_png(report: CompareReport, path: Path) -> str | None:
    """Draw the chart into `path`; returns why not when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib); no compare.png"
    workloads: list[str] = [w for w in report.meta["workloads"] if report.rows_for(w)]
    if not workloads:
        return "no run finished; no compare.png"
    servers = report.meta["servers"]
    cmap = plt.get_cmap("tab20")
    colors = [cmap(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # distinct hues first
    row_height = 0.9 + 0.28 * len(servers)
    height = row_height * len(workloads) + 0.8
    fig, axes = plt.subplots(
        len(workloads), len(_PANELS), figsize=(13, height), squeeze=False
    )  # fmt: skip
    for r, workload in enumerate(workloads):
        counts = sorted({row.ok_runs for row in report.rows_for(workload)})
        n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]} to {counts[-1]}"
        for c, (metric, title) in enumerate(_PANELS):
            ax = axes[r][c]
            _panel(ax, report, workload, metric, colors)
            ax.set_title(f"{workload}: {title}", fontsize="medium")
            if c:
                ax.tick_params(labelleft=False)
        axes[r][0].set_ylabel(f"{parse_workload(workload).describe()}\n{n}", fontsize="small")
    fig.suptitle(
        f"muxio compare: bar = median, whiskers = min-max over {report.meta['repeat']} "
        "repeat(s), dots = each run",
        fontsize="medium",
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # the title's half inch stays clear
    fig.savefig(path, dpi=110, metadata={"Description": _contents(fig)})
    plt.close(fig)
    return None
