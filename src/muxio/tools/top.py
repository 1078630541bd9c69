"""`muxio top HOST:PORT`: a running server's loop, live, from its ``--metrics`` endpoint.

It reads what Prometheus would scrape, so it needs nothing of the server but
the endpoint, and shows each refresh as the interval since the last one:
loop delay p50/p99, utilisation, iterations per second, the slowest sites
the watchdog named, and the connections.  A scrape is what `muxio.metrics`
serves from its own thread, so a blocked loop still shows (as blocked).
"""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from muxio import validate
from muxio.cmdline import text_checked
from muxio.errors import RuntimeFailure, UsageError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "address",
        type=text_checked(validate.metrics_address, "HOST:PORT"),
        metavar="HOST:PORT",
        help="where the server serves its metrics (`muxio serve --metrics HOST:PORT`)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (1)"
    )
    p.add_argument(
        "--once", action="store_true",
        help="print one interval as text and exit, instead of the live view",
    )
    p.add_argument("--sites", type=int, default=8, metavar="N", help="slow sites shown (8)")


@dataclass
class Scrape:
    """The families `muxio top` reads from one scrape, by sample name and labels."""

    at: float
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def labelled(self, name: str, label: str) -> dict[str, float]:
        return {
            dict(lbl)[label]: v for (n, lbl), v in self.values.items()
            if n == name and label in dict(lbl)
        }

    def buckets(self, name: str) -> list[tuple[float, float]]:
        out = [(float(le), v) for le, v in self.labelled(f"{name}_bucket", "le").items()]
        return sorted(out)


def parse(text: str, at: float) -> Scrape:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise UsageError(
            "muxio top needs the prometheus-client package: pip install 'muxio[metrics]'"
        ) from None
    scrape = Scrape(at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            scrape.values[key] = float(sample.value)
    return scrape


def fetch(host: str, port: int, timeout: float = 5.0) -> Scrape:
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            text = reply.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeFailure(
            f"cannot read {url}: {reason} (is the server running with --metrics {host}:{port}?)"
        ) from None
    scrape = parse(text, time.monotonic())
    if not any(name.startswith("muxio_loop_") for name, _ in scrape.values):
        raise RuntimeFailure(f"{url} serves no muxio loop metrics: is it muxio's --metrics?")
    return scrape


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The upper bound (seconds) of the bucket holding quantile `q`: all Prometheus keeps."""
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    rank = q * buckets[-1][1]
    for le, cumulative in buckets:
        if cumulative >= rank:
            return le if le != float("inf") else buckets[-2][0] if len(buckets) > 1 else 0.0
    return 0.0


def _delta(later: list[tuple[float, float]], earlier: list[tuple[float, float]]) -> list[
    tuple[float, float]
]:
    before = dict(earlier)
    return [(le, v - before.get(le, 0.0)) for le, v in later]


@dataclass
class View:
    """One refresh: what changed between two scrapes."""

    seconds: float
    iterations_per_s: float
    utilisation: float
    delay_p50_ms: float
    delay_p99_ms: float
    blocked_ms: float
    responding: bool
    connections_open: float
    accepted_per_s: float
    sites: list[tuple[str, float, float, float]]
    """(site, iterations, total blocked ms, max ms), most blocked first."""


def view(earlier: Scrape, later: Scrape, top: int) -> View:
    dt = max(later.at - earlier.at, 1e-9)

    def rate(name: str, **labels: str) -> float:
        return (later.get(name, **labels) - earlier.get(name, **labels)) / dt

    delay = _delta(later.buckets("muxio_loop_delay_seconds"),
                   earlier.buckets("muxio_loop_delay_seconds"))
    totals = later.labelled("muxio_loop_slow_site_blocked_seconds_total", "site")
    counts = later.labelled("muxio_loop_slow_site_iterations_total", "site")
    worst = later.labelled("muxio_loop_slow_site_max_seconds", "site")
    ranked = sorted(totals, key=lambda s: totals[s], reverse=True)[:top]
    return View(
        seconds=dt,
        iterations_per_s=rate("muxio_loop_iterations_total"),
        utilisation=min(max(rate("muxio_loop_busy_seconds_total"), 0.0), 1.0),
        delay_p50_ms=quantile(delay, 0.5) * 1000,
        delay_p99_ms=quantile(delay, 0.99) * 1000,
        blocked_ms=later.get("muxio_loop_blocked_seconds") * 1000,
        responding=later.get("muxio_loop_responding") >= 1,
        connections_open=later.get("muxio_connections_open", source="server"),
        accepted_per_s=rate("muxio_connections_accepted_total", source="server"),
        sites=[(s, counts.get(s, 0.0), totals[s] * 1000, worst.get(s, 0.0) * 1000) for s in ranked],
    )


def lines(v: View, where: str) -> Iterable[str]:
    state = "responding" if v.responding else f"BLOCKED for {v.blocked_ms:.0f} ms"
    yield f"muxio top {where}: loop {state}, over the last {v.seconds:.1f} s"
    yield (
        f"delay p50 {v.delay_p50_ms:g} ms  p99 {v.delay_p99_ms:g} ms  "
        f"utilisation {v.utilisation:.0%}  iterations/s {v.iterations_per_s:,.0f}"
    )
    yield f"connections open {v.connections_open:,.0f}  accepted/s {v.accepted_per_s:,.1f}"
    yield "slow sites (iterations, blocked ms total, max ms):"
    for site, n, total, longest in v.sites:
        yield f"  {n:6.0f} {total:10.0f} {longest:8.0f}  {site}"
    if not v.sites:
        yield "  none yet"


def _renderable(v: View, where: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = list(lines(v, where))[:3]
    table = Table(title="slow sites (blamed by the watchdog)", expand=True)
    table.add_column("iterations", justify="right")
    table.add_column("blocked ms", justify="right")
    table.add_column("max ms", justify="right")
    table.add_column("site", overflow="fold")
    for site, n, total, longest in v.sites:
        table.add_row(f"{n:.0f}", f"{total:.0f}", f"{longest:.0f}", site)
    return Group(*(Text(line) for line in head), table)


def main(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise UsageError(f"--interval must be a positive number of seconds, not {args.interval}")
    host, port = args.address
    where = f"{host}:{port}"
    earlier = fetch(host, port)
    if args.once:
        time.sleep(args.interval)
        for line in lines(view(earlier, fetch(host, port), args.sites), where):
            print(line)
        return 0
    try:
        from rich.live import Live
    except ImportError:
        raise UsageError("muxio top needs rich for its live view: pip install 'muxio[metrics]' "
                         "(or use --once)") from None
    try:
        with Live(auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(args.interval)
                later = fetch(host, port)
                live.update(_renderable(view(earlier, later, args.sites), where), refresh=True)
                earlier = later
    except KeyboardInterrupt:
        return 0
