"""What the load generator does in one run: connections, request size, idle connections."""

from __future__ import annotations

import re
from dataclasses import dataclass

from muxio.errors import UsageError

DEFAULT_WORKLOADS = "1x1024,10x1024,100x1024,1000x1024,100x65536,50x1024,50x1024+5000idle"
_WORKLOAD = re.compile(r"^(\d+)x(\d+)([kKmM]?)(?:\+(\d+)idle)?$")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


@dataclass(frozen=True)
class Workload:
    connections: int
    size: int
    idle: int = 0

    @property
    def name(self) -> str:
        return f"{self.connections}x{self.size}" + (f"+{self.idle}idle" if self.idle else "")

    def describe(self) -> str:
        """For a chart title: '100 conns x 64 KiB + 5000 idle'."""
        size = self.size
        shown = next(
            (f"{size // u} {n}" for u, n in ((1 << 20, "MiB"), (1 << 10, "KiB")) if size % u == 0),
            f"{size} B",
        )
        text = f"{self.connections} conn x {shown}"
        return text + (f" + {self.idle} idle" if self.idle else "")


def parse_workload(text: str) -> Workload:
    """Accept 'CONNxSIZE[k|m][+IDLEidle]', e.g. 100x1024, 100x64k, 50x1k+5000idle."""
    m = _WORKLOAD.match(text.strip())
    if not m:
        raise UsageError(
            f"cannot read workload {text!r}; write CONNxBYTES[+IDLEidle], e.g. 50x1024+5000idle"
        )
    unit = _UNITS[m.group(3).lower()]
    w = Workload(int(m.group(1)), int(m.group(2)) * unit, int(m.group(4) or 0))
    if w.connections < 1 or w.size < 1:
        raise UsageError(f"workload {text!r} needs at least 1 connection of at least 1 byte")
    return w


def parse_workloads(text: str) -> list[Workload]:
    """A comma list of workloads; 'default' stands for DEFAULT_WORKLOADS."""
    items = [t for t in text.replace("default", DEFAULT_WORKLOADS).split(",") if t.strip()]
    if not items:
        raise UsageError("no workload given; e.g. 10x1024,100x1024")
    out: list[Workload] = []
    for item in items:
        w = parse_workload(item)
        if w not in out:
            out.append(w)
    return out
