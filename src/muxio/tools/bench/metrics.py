"""What a run measured: an HDR-style latency histogram, error counts, the result.

The histogram is `muxio.histogram` (the loop records its own health into the
same layout), in nanoseconds, so values under 256 ns are exact.  Why not the `hdrhistogram`
package (0.10.8): the worker records one value per reply in pure Python,
and a client that costs more per request than the server measures itself.
`python benchmarks/histogram_cost.py` (200,000 log-normal latencies around
0.3 ms, best of 5-9, four runs on this shared 2-vCPU machine under load,
hence the ranges), per value recorded:

    bit-length slot + list (this)      300-530 ns
    log() slot + dict (before)         340-730 ns
    hdrhistogram.record_value        2,440-3,960 ns

Merging the workers' histograms happens once per run either way (~0.3 ms for
a dict of non-zero slots, ~0.3 ms for hdrhistogram's encode/decode/add), and
both land p50/p90/p99/p99.9 within 0.5 % of the exact values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ...histogram import percentile


@dataclass
class LatencySummary:
    """Milliseconds from the request's start to its whole reply.

    The start is when the request was sent in a closed loop, and when it was
    due in an open loop (`rate`): a request that waited behind a slow one
    counts its wait, as wrk2 counts it.
    """

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    p999: float = 0.0


def summarize(hist: dict[int, int], total_ns: int, max_ns: int, count: int) -> LatencySummary:
    ms = 1e-6

    def at(q: float) -> float:
        return round(min(percentile(hist, count, q), max_ns) * ms, 4)

    return LatencySummary(
        p50=at(0.50),
        p90=at(0.90),
        p99=at(0.99),
        max=round(max_ns * ms, 4),
        mean=round(total_ns / count * ms, 4) if count else 0.0,
        p999=at(0.999),
    )


@dataclass
class ErrorCounts:
    """Failures by kind; each ends the connection it happened on, so none is double counted."""

    wrong_bytes: int = 0
    resets: int = 0
    connect_failures: int = 0
    stalls: int = 0
    idle_dropped: int = 0

    @property
    def total(self) -> int:
        return (
            self.wrong_bytes + self.resets + self.connect_failures + self.stalls + self.idle_dropped
        )

    def add(self, other: dict[str, int]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + int(other.get(f.name, 0)))


@dataclass
class BenchResult:
    """What one run measured; rates cover only the window after warmup."""

    target: str
    connections: int
    size: int
    idle: int
    processes: int
    duration: float
    warmup: float
    requests: int = 0
    requests_per_s: float = 0.0
    mb_per_s: float = 0.0  # both directions: sent + received, 10**6 bytes
    latency_ms: LatencySummary = field(default_factory=LatencySummary)
    errors: ErrorCounts = field(default_factory=ErrorCounts)
    connected: int = 0
    idle_connected: int = 0
    alive_at_end: int = 0
    reconnects: int = 0
    """With `reconnect`: connections the server closed cleanly mid-request, reopened."""
    lost: int = 0
    """With `reconnect`: requests sent and never answered where no graceful drain explains
    the close (a reset, a reply cut short, a connection closed before its first reply).
    They were sent again, but the server may have read and dropped them: not `ok` unless
    `allow_lost`."""
    allow_lost: bool = False
    first_lost: str = ""
    """The earliest lost request's connection, in words."""
    protocol: str = "echo"
    pipeline: int = 1
    rate: float | None = None
    """Requests per second per connection in an open loop; None for a closed loop."""
    window_s: float = 0.0
    """The measured window as it ran: shorter than `duration` when every connection failed."""
    first_error: str = ""
    """The earliest failure, in words (`wrong reply on connection 3: expected ..., got ...`)."""
    first_error_kind: str = ""
    """Which `ErrorCounts` field `first_error` was counted in."""

    @property
    def ok(self) -> bool:
        return (
            self.requests > 0 and self.errors.total == 0 and (self.allow_lost or not self.lost)
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["errors"]["total"] = self.errors.total
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class Progress:
    """A snapshot the parent assembles from the workers' periodic reports."""

    phase: str  # "warmup", "measure" or "done"
    elapsed: float
    requests: int
    errors: int
