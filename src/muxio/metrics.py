"""The loop's health, and a server's counters, in Prometheus's text format.

`serve_metrics(loop, host, port)` serves ``/metrics`` for any program on
muxio's loop; `muxio serve --metrics HOST:PORT` does it for a server, adding
its connections, bytes, refusals, TLS handshake failures and offload pool.
The exposition comes from `prometheus-client` (the ``metrics`` extra): the
format has enough corners (escaping, histogram suffixes, ``# TYPE`` lines,
OpenMetrics negotiation) that a well-kept library beats our own, and its
cost is paid per scrape, never per iteration.

The HTTP server runs in its own thread, so a scrape answers while the loop
is blocked: that is when it matters most.  The loop's own numbers are read
from that thread (counters and histograms, each read whole under the GIL),
and ``muxio_loop_blocked_seconds`` says how long the current stall has
lasted.  What only the loop thread may touch (a server's open connections,
an offloader's queue) is asked for with `call_soon_threadsafe`; a loop that
does not answer within `LOOP_ANSWER_TIMEOUT` leaves those families out of
that scrape, and ``muxio_loop_responding`` is 0.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .histogram import slot_range
from .loop import EventLoop, LoopHealth

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

LOOP_ANSWER_TIMEOUT = 0.5
"""Seconds a scrape waits for the loop thread before it leaves out what only that thread reads."""

BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Seconds: from a fast loop's 0.1 ms to a stall that killed a health check."""

Source = Callable[[], dict[str, Any]]
"""A `stats()`-like callable run on the loop thread: what a server or offloader counts."""


class MissingExtra(RuntimeError):
    """prometheus-client is not installed; the message says how to get it."""


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise MissingExtra(
            "metrics need the prometheus-client package: pip install 'muxio[metrics]'"
        ) from None
    return prometheus_client


def histogram_buckets(sparse: dict[int, int], bounds: tuple[float, ...] = BUCKETS) -> tuple[
    list[tuple[str, float]], float
]:
    """Prometheus's cumulative ``le`` buckets and sum from a sparse HDR histogram (ns).

    A slot is at most 0.8 % wide, so each is counted at its middle: a value
    within 0.4 % of a bound may land on either side of it.
    """
    edges = [b * 1e9 for b in bounds]
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for slot, n in sparse.items():
        low, high = slot_range(slot)
        mid = (low + high - 1) / 2
        total += mid * n
        counts[bisect.bisect_left(edges, mid)] += n
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*map(repr, bounds), "+Inf"), counts, strict=True):
        running += n
        out.append((bound, float(running)))
    return out, total / 1e9


class LoopCollector:
    """A prometheus-client collector over one muxio loop and whatever counts beside it."""

    def __init__(self, loop: EventLoop, sources: dict[str, Source] | None = None) -> None:
        self.loop = loop
        self.sources = dict(sources or {})

    def describe(self) -> list[Metric]:
        return []  # families vary with the sources that answer; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        core = _prometheus().core
        answered, extra = self._from_loop_thread()
        health = answered or self.loop.health()  # read whole under the GIL; all_tasks retries
        yield from _loop_families(core, self.loop, health)
        responding = core.GaugeMetricFamily(
            "muxio_loop_responding",
            f"1 if the loop thread answered this scrape within {LOOP_ANSWER_TIMEOUT:g} s",
        )
        responding.add_metric([], 1.0 if answered is not None else 0.0)
        yield responding
        for name, values in extra.items():
            yield from _source_families(core, name, values)

    def _from_loop_thread(self) -> tuple[LoopHealth | None, dict[str, dict[str, Any]]]:
        if self.loop.is_closed():
            return None, {}
        done = threading.Event()
        box: dict[str, Any] = {}

        def take() -> None:
            try:
                box["health"] = self.loop.health()
                box["sources"] = {name: source() for name, source in self.sources.items()}
            finally:
                done.set()

        try:
            self.loop.call_soon_threadsafe(take)
        except RuntimeError:
            return None, {}
        if not done.wait(LOOP_ANSWER_TIMEOUT) or "sources" not in box:
            return None, {}
        return box["health"], box["sources"]


def _loop_families(core: Any, loop: EventLoop, h: LoopHealth) -> Iterator[Metric]:
    stats = h.stats
    for name, doc, sparse in (
        (
            "muxio_loop_delay_seconds",
            "How late the loop ran work that was due: a ready callback or a due timer",
            h.delay_ns,
        ),
        (
            "muxio_loop_iteration_seconds",
            "Time each loop iteration spent away from the poller",
            h.iteration_ns,
        ),
    ):
        buckets, total = histogram_buckets(sparse)
        family = core.HistogramMetricFamily(name, doc)
        family.add_metric([], buckets, total)
        yield family
    counters = (
        ("muxio_loop_iterations", "Trips through the poller", h.iterations),
        ("muxio_loop_callbacks", "Handles and timers run", stats.get("callbacks", 0)),
        ("muxio_loop_events", "Ready descriptors the poller reported", stats.get("events", 0)),
        (
            "muxio_loop_slow_iterations",
            "Iterations that held the loop past slow_callback_ms",
            stats.get("slow_iterations", 0),
        ),
        ("muxio_loop_busy_seconds", "Seconds spent away from the poller", h.busy_s),
        (
            "muxio_gc_pause_seconds",
            "Seconds the garbage collector paused the loop",
            h.gc_pause_ms / 1e3,
        ),
    )
    for name, doc, value in counters:
        family = core.CounterMetricFamily(name, doc)
        family.add_metric([], float(value))
        yield family
    gc = core.CounterMetricFamily(
        "muxio_gc_pauses", "Garbage collections on the loop's process, by generation",
        labels=["generation"],
    )
    for generation, n in enumerate(h.gc_generations):
        gc.add_metric([str(generation)], float(n))
    yield gc
    busy_since = loop._busy_since
    blocked = time.monotonic() - busy_since if busy_since else 0.0
    gauges = (
        ("muxio_loop_utilisation", "Busy seconds over wall seconds since the loop first ran",
         h.busy_s / h.wall_s if h.wall_s > 0 else 0.0),
        ("muxio_loop_blocked_seconds", "How long the iteration running now has held the loop "
         "(0 while it waits in the poller)", blocked),
        ("muxio_loop_ready", "Callbacks queued to run", h.ready),
        ("muxio_loop_timers", "Timers scheduled", h.timers),
        ("muxio_loop_tasks", "Tasks alive on the loop", h.tasks),
        ("muxio_gc_pause_max_seconds", "The longest garbage-collector pause",
         h.gc_pause_max_ms / 1e3),
        ("muxio_loop_delay_max_seconds", "The latest the loop has run due work",
         h.delay_max_ms / 1e3),
    )
    for name, doc, value in gauges:
        family = core.GaugeMetricFamily(name, doc)
        family.add_metric([], float(value))
        yield family
    count = core.CounterMetricFamily(
        "muxio_loop_slow_site_iterations",
        "Slow iterations blamed on a site (the coroutine or callback the watchdog named)",
        labels=["site"],
    )
    total = core.CounterMetricFamily(
        "muxio_loop_slow_site_blocked_seconds",
        "Seconds of slow iterations blamed on a site", labels=["site"],
    )
    worst = core.GaugeMetricFamily(
        "muxio_loop_slow_site_max_seconds", "The longest slow iteration of a site", labels=["site"],
    )
    for site in h.sites:
        count.add_metric([site.site], float(site.iterations))
        total.add_metric([site.site], site.total_ms / 1e3)
        worst.add_metric([site.site], site.max_ms / 1e3)
    yield from (count, total, worst)


SERVER_COUNTERS = {
    "connections": ("muxio_connections_accepted", "Connections accepted"),
    "refused": ("muxio_connections_refused", "Connections refused at the connection limit"),
    "idle_closed": ("muxio_connections_idle_closed", "Connections closed for idling"),
    "bytes_in": ("muxio_received_bytes", "Bytes received from clients"),
    "bytes_out": ("muxio_sent_bytes", "Bytes sent to clients"),
    "tls_handshakes_failed": ("muxio_tls_handshakes_failed", "TLS handshakes that failed"),
    "submitted": ("muxio_offload_submitted_jobs", "Jobs handed to the offload pool"),
    "completed": ("muxio_offload_completed_jobs", "Offloaded jobs finished"),
    "failed": ("muxio_offload_failed_jobs", "Offloaded jobs that raised"),
    "pools_replaced": ("muxio_offload_pools_replaced", "Offload pools replaced after a crash"),
}
SERVER_GAUGES = {
    "open": ("muxio_connections_open", "Connections open now"),
    "queued": ("muxio_offload_queued_jobs", "Jobs waiting for a free worker"),
    "running": ("muxio_offload_running_jobs", "Jobs a worker is running now"),
    "workers": ("muxio_offload_pool_size", "Worker processes or threads in the offload pool"),
}


def _source_families(core: Any, source: str, values: dict[str, Any]) -> Iterator[Metric]:
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key in SERVER_COUNTERS:
            name, doc = SERVER_COUNTERS[key]
            family = core.CounterMetricFamily(name, doc, labels=["source"])
        elif key in SERVER_GAUGES:
            name, doc = SERVER_GAUGES[key]
            family = core.GaugeMetricFamily(name, doc, labels=["source"])
        else:
            continue
        family.add_metric([source], float(value))
        yield family


class MetricsServer:
    """A running ``/metrics`` endpoint; `close()` stops its thread and frees the port."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host: str = httpd.server_address[0]
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def registry_for(loop: EventLoop, sources: dict[str, Source] | None = None) -> Any:
    """A prometheus-client registry holding only this loop's collector."""
    prometheus = _prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(LoopCollector(loop, sources))
    return registry


def serve_metrics(
    loop: EventLoop,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    sources: dict[str, Source] | None = None,
) -> MetricsServer:
    """Serve the loop's metrics at ``http://host:port/metrics`` until `close()`.

    `sources` adds a server's or an offloader's `stats()` by name (the
    ``source`` label), read on the loop thread.  Port 0 picks a free one
    (`MetricsServer.port`).  Raises `MissingExtra` without prometheus-client.
    """
    if not isinstance(loop, EventLoop):
        raise TypeError(
            f"serve_metrics() reads muxio's event loop, and this is "
            f"{type(loop).__module__}.{type(loop).__qualname__}"
        )
    prometheus = _prometheus()
    registry = registry_for(loop, sources)
    httpd, thread = prometheus.start_http_server(port, addr=host, registry=registry)
    thread.name = f"muxio-metrics-{httpd.server_address[1]}"
    return MetricsServer(httpd, thread)
