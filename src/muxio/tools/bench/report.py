"""How a run looks to a person: a live progress line while it runs, a summary after."""

from __future__ import annotations

from typing import TextIO

from .metrics import BenchResult, Progress
from .orchestration import BenchHooks


class PlainDisplay(BenchHooks):
    """One self-overwriting line; enough for a terminal without rich."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last_requests = 0
        self.last_time = 0.0
        self.rate = 0.0
        self.width = 0

    def line(self, p: Progress) -> str:
        dt = p.elapsed - self.last_time
        if dt > 0:
            self.rate = (p.requests - self.last_requests) / dt
        self.last_requests, self.last_time = p.requests, p.elapsed
        return (
            f"{p.phase:<7} {p.elapsed:6.1f} s  {p.requests:>10,} requests  "
            f"{self.rate:>10,.0f}/s  errors {p.errors}"
        )

    def tick(self, progress: Progress) -> None:
        if progress.phase == "done":
            self.stop()
            return
        text = self.line(progress)
        self.width = max(self.width, len(text))
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()

    def stop(self) -> None:
        """Clear the line, however the run ended, so an error line starts at the margin."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


class RichDisplay(PlainDisplay):
    """Started on the first tick, after the workers exist, so no rich state is forked."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        from rich.live import Live

        self.live: Live | None = None

    def tick(self, progress: Progress) -> None:
        if progress.phase == "done":
            self.stop()
            return
        if self.live is None:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                "",
                console=Console(file=self.stream, highlight=False),
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()
        style = "yellow" if progress.phase == "warmup" else "green"
        self.live.update(f"[{style}]{self.line(progress)}[/]", refresh=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def display(stream: TextIO) -> PlainDisplay | None:
    """A live display on a terminal (rich if installed), none when piped."""
    if not stream.isatty():
        return None
    try:
        return RichDisplay(stream)
    except ImportError:
        return PlainDisplay(stream)


def format_summary(r: BenchResult) -> str:
    e = r.errors
    lat = r.latency_ms
    load = "closed loop" if r.rate is None else f"open loop at {r.rate:,g} req/s per connection"
    if r.pipeline > 1:
        load += f", pipeline {r.pipeline}"
    what = f"{r.size} B" if r.protocol == "echo" else "line"
    since = "when due" if r.rate is not None else "when sent"
    lines = [
        f"muxio bench: {r.target}, {r.protocol}, {r.connections} x {what}"
        + (f" + {r.idle} idle" if r.idle else "")
        + f", {load}, {r.processes} process(es), {r.duration:g} s after {r.warmup:g} s warmup",
        f"  requests    {r.requests:,} ({r.requests_per_s:,.0f}/s)",
        f"  throughput  {r.mb_per_s:,.2f} MB/s (sent + received)",
        f"  latency ms  p50 {lat.p50:.3f}  p90 {lat.p90:.3f}  p99 {lat.p99:.3f}  "
        f"p99.9 {lat.p999:.3f}  max {lat.max:.3f}  (from {since})",
        f"  errors      {e.total}: wrong bytes {e.wrong_bytes}, resets {e.resets}, "
        f"connect failures {e.connect_failures}, stalls {e.stalls}, idle dropped {e.idle_dropped}",
    ]
    if r.first_error and r.window_s < r.duration:
        lines.append(f"  ended early {r.window_s:g} s into the window: no connection left")
    if r.connected < r.connections or r.idle_connected < r.idle:
        lines.append(
            f"  connected   {r.connected}/{r.connections} active, {r.idle_connected}/{r.idle} idle"
        )
    if r.reconnects:
        lines.append(f"  reconnects  {r.reconnects}")
    if r.lost:
        lines.append(f"  lost        {r.lost} request(s) sent and unanswered: {r.first_lost}"
                     + (" (allowed)" if r.allow_lost else ""))
    return "\n".join(lines)
