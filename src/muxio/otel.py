"""A blocked loop as an OpenTelemetry span, where opentelemetry-api is installed.

A trace shows a slow request but not why: another request's coroutine held
the loop.  So each slow iteration the watchdog reports becomes a span of its
own, ``muxio.loop.blocked``, back-dated to when the iteration began and
ended when it gave the loop back, carrying the site the watchdog named.  The
API is imported on the first slow iteration, never per iteration, and with
no SDK configured its tracer does nothing; without the package this is one
failed import, once.
"""

from __future__ import annotations

import time
from typing import Any

_tracer: Any = None
_looked = False


def _get_tracer() -> Any:
    global _tracer, _looked
    if not _looked:
        _looked = True
        try:
            from opentelemetry import trace
        except ImportError:
            return None
        _tracer = trace.get_tracer("muxio")
    return _tracer


def record_stall(site: str, description: str, started: float, busy: float) -> None:
    """One span for an iteration that began at `started` (monotonic) and held `busy` seconds."""
    tracer = _get_tracer()
    if tracer is None:
        return
    end_ns = time.time_ns() - int((time.monotonic() - started - busy) * 1e9)
    start_ns = end_ns - int(busy * 1e9)
    span = tracer.start_span(
        "muxio.loop.blocked",
        start_time=start_ns,
        attributes={
            "muxio.loop.site": site,
            "muxio.loop.blocked_ms": round(busy * 1000, 3),
            "muxio.loop.stall": description,
        },
    )
    span.end(end_time=end_ns)


def reset() -> None:
    """Look for the API again (tests that install a tracer provider after a first stall)."""
    global _tracer, _looked
    _tracer, _looked = None, False
