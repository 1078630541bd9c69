"""Run a service until a signal, then shut down gracefully and report.

This is `muxio serve` without the argument parsing, so an embedding program
gets the same lifecycle: one log line when listening, a drain on the first
signal, an immediate stop on the second, one summary line at the end.

Every signal whose default action would kill the server outright (leaving
the Unix socket file and the worker pool behind) is handled on the loop:

    SIGTERM, SIGINT, SIGHUP  drain (a closed terminal is a request to stop);
                             the second one stops at once
    SIGQUIT                  stop at once, but still clean up
    SIGUSR1                  log the statistics line and go on
    SIGUSR2                  profile the loop for $MUXIO_PROFILE_SECONDS (10 s) and
                             write it to $MUXIO_PROFILE_OUT (else a file in the
                             temporary directory); the path is logged
    SIGALRM                  ignored (logged at debug level)

The summary's ``drain`` field says how the shutdown ended: ``complete``
(every connection finished), ``timeout`` (``shutdown_timeout`` aborted some)
or ``forced`` (a second signal, or SIGQUIT).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from . import profiler, validate
from .listeners import bind_tcp, bind_unix
from .loop import EventLoop
from .pollers import Poller
from .server import Server
from .services import Service

FIRST_REQUEST_GRACE = 1.0
"""Seconds a connection that has sent nothing yet is read for once a drain begins."""

log = logging.getLogger("muxio")

PROFILE_SECONDS_VAR = "MUXIO_PROFILE_SECONDS"
PROFILE_OUT_VAR = "MUXIO_PROFILE_OUT"
PROFILE_SECONDS = 10.0
"""How long a SIGUSR2 profile samples when `MUXIO_PROFILE_SECONDS` is unset."""


class ServeConfig:
    """What `muxio serve` was asked for, each value checked here (see `muxio.validate`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        unix: str | None = None,
        unix_mode: int | None = None,
        poller: str = "auto",
        backlog: int = 1024,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        slow_callback_ms: float = 100.0,
        shutdown_timeout: float = 10.0,
        service_name: str = "upper",
        tls: Any = None,
        tls_client_certs: bool = False,
        profile_seconds: float | None = None,
        profile_out: str | None = None,
        profile_clock: str = "cpu",
        profile_tag: str = "",
        metrics: tuple[str, int] | None = None,
    ) -> None:
        self.host = host
        self.port = validate.port(port)
        self.unix = unix
        self.unix_mode = unix_mode
        self.poller = poller
        self.backlog = validate.backlog(backlog)
        self.max_connections = validate.max_connections(max_connections)
        self.idle_timeout = validate.idle_timeout(idle_timeout)
        self.slow_callback_ms = validate.slow_callback_ms(slow_callback_ms)
        self.shutdown_timeout = validate.shutdown_timeout(shutdown_timeout)
        self.service_name = service_name
        self.tls = tls
        """An `ssl.SSLContext` to serve TLS with, or None for plain TCP."""
        self.tls_client_certs = tls_client_certs
        self.profile_seconds = validate.profile_seconds(profile_seconds)
        """Profile the loop from the start for this long (None: only on SIGUSR2)."""
        self.profile_out = profile_out or os.environ.get(PROFILE_OUT_VAR) or None
        self.profile_clock = validate.profile_clock(profile_clock)
        self.profile_tag = profile_tag
        """Put before a profile file's extension: each worker of a supervisor writes its own."""
        self.metrics = validate.metrics_address(metrics) if metrics is not None else None
        """(host, port) of the Prometheus endpoint (`muxio.metrics`), or None for none."""


def _tagged(path: str, tag: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}{tag}{ext}"


class _Profiling:
    """One profile at a time, ended after its seconds (`profiler.call_after`) or by the shutdown."""

    def __init__(self, loop: EventLoop, config: ServeConfig) -> None:
        self.loop = loop
        self.config = config
        self.sampler: profiler.Sampler | None = None
        self.out = ""
        self.timer: Any = None

    def begin(self, seconds: float, out: str | None, why: str) -> None:
        if self.sampler is not None:
            log.warning("%s: a profile is being taken already (to %s): ignored", why, self.out)
            return
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = os.path.join(tempfile.gettempdir(), f"muxio-profile-{os.getpid()}-{stamp}.json")
        self.out = _tagged(out, self.config.profile_tag)
        try:
            self.sampler = profiler.start(self.loop, clock=self.config.profile_clock)
        except (RuntimeError, ValueError, OSError) as exc:
            log.warning("%s: cannot profile the loop: %s", why, exc)
            return
        log.info(
            "%s: profiling the loop (%s time) for %g s, to %s",
            why, self.config.profile_clock, seconds, self.out,
        )
        self.timer = profiler.call_after(self.loop, seconds, self.finish)

    def finish(self) -> None:
        sampler, self.sampler = self.sampler, None
        if sampler is None:
            return
        if self.timer is not None:
            self.timer()
        result = sampler.stop()
        try:
            result.write(self.out)
        except OSError as exc:
            log.warning("profile not written to %s: %s", self.out, exc.strerror or exc)
            return
        top = result.top(1)
        log.info(
            "profile written to %s: %d samples over %.1f s, idle %.0f %%%s "
            "(read it with: muxio profile-report %s)",
            self.out,
            result.samples,
            result.seconds,
            result.idle_share * 100,
            f", top site {top[0][0]} {top[0][1]:.0%}" if top else "",
            self.out,
        )

    def on_signal(self, signame: str) -> None:
        seconds = PROFILE_SECONDS
        text = os.environ.get(PROFILE_SECONDS_VAR, "").strip()
        if text:
            try:
                seconds = validate.profile_seconds(float(text), PROFILE_SECONDS_VAR) or seconds
            except (ValueError, TypeError):
                log.warning(
                    "%s: %s=%r is not a number of seconds above 0; profiling for %g s",
                    signame, PROFILE_SECONDS_VAR, text, PROFILE_SECONDS,
                )
        self.begin(seconds, self.config.profile_out, signame)


def _is_wildcard(sock: socket.socket) -> bool:
    return sock.getsockname()[0] in ("0.0.0.0", "::")


class _Stopping:
    """How the shutdown is going: its outcome so far, and when its time is up."""

    __slots__ = ("began", "deadline", "drain")

    def __init__(self) -> None:
        self.began = False
        self.drain = "complete"
        self.deadline = float("inf")


TASK_END_TIMEOUT = 1.0
"""Seconds tasks still running after the drain get, once cancelled, to finish."""


def _end_tasks(loop: EventLoop, seconds_left: float) -> None:
    """Cancel the tasks left when serving ends and let them run to their end, as `asyncio.run`.

    A stream handler whose connection was aborted at the shutdown timeout
    (or that still cleans up after its connection closed) would otherwise
    be destroyed pending when the loop closes, its `finally` never run.
    """
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    timeout = max(min(seconds_left, TASK_END_TIMEOUT), 0.1)
    loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in a task cancelled at shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def _start_metrics(config: ServeConfig, loop: EventLoop, server: Server, service: Service) -> Any:
    if config.metrics is None:
        return None
    from .metrics import serve_metrics
    from .offload import Offloader

    sources: dict[str, Callable[[], dict[str, Any]]] = {"server": server.stats}
    offloader = getattr(service.factory, "offloader", None)
    if isinstance(offloader, Offloader):
        pool = offloader

        def offload_stats() -> dict[str, Any]:
            return {**pool.stats(), "queued": pool.queued, "running": pool.running,
                    "workers": pool.workers}

        sources["offload"] = offload_stats
    exporter = serve_metrics(loop, *config.metrics, sources=sources)
    log.info("metrics on %s", exporter.url)
    return exporter


def run_service(
    service: Service,
    config: ServeConfig,
    *,
    on_shutdown: Callable[[], object] | None = None,
    poller: Poller | None = None,
    sockets: list[socket.socket] | None = None,
) -> dict[str, object]:
    """Serve until a signal, returning the totals printed in the summary.

    The service's `on_start(loop)` runs once the loop exists, before the
    server listens (start a worker pool there); its `on_close(seconds_left)`
    runs once the loop has stopped for good, before it is closed (shut the
    pool down there, waiting no longer than what is left of
    `shutdown_timeout`: 0 after a forced stop).  `sockets`, when given, are
    served instead of binding the configured address (handed in by
    systemd, a parent process or a supervisor).
    """
    on_start, on_close = service.on_start, service.on_close
    sockets = validate.sockets(sockets)
    if sockets is None and config.unix is not None:
        sockets = bind_unix(config.unix, backlog=config.backlog, mode=config.unix_mode)
    elif sockets is None:
        sockets = bind_tcp(config.host, config.port, backlog=config.backlog)
        if any(_is_wildcard(s) for s in sockets):
            log.warning(
                "host %s listens on every network interface: anyone who can reach this "
                "machine can connect (use 127.0.0.1 to stay local)",
                config.host or "''",
            )
    validate.slow_callback_ms(config.slow_callback_ms)
    loop = EventLoop(
        poller if poller is not None else config.poller,
        slow_callback_ms=config.slow_callback_ms,
    )
    server = Server(
        loop,
        service.factory,
        sockets,
        max_connections=config.max_connections,
        idle_timeout=config.idle_timeout,
        ssl=config.tls,
        judge_traffic=True,
    )
    state = _Stopping()
    profiling = _Profiling(loop, config)

    def stop_now() -> None:
        state.began = True
        state.drain = "forced"
        state.deadline = loop.time()
        for transport in list(server.connections):
            transport.abort()
        loop.call_soon(loop.stop)

    def begin_shutdown(signame: str) -> None:
        if state.drain == "forced":
            return
        if state.began:
            log.warning("%s again: stopping now", signame)
            stop_now()
            return
        state.began = True
        log.info(
            "%s: shutting down, flushing %d connections (up to %g s)",
            signame,
            len(server.connections),
            config.shutdown_timeout,
        )
        state.deadline = loop.time() + config.shutdown_timeout
        if on_shutdown is not None:
            on_shutdown()
        server.shutdown(config.shutdown_timeout, loop.stop, first_request_grace=FIRST_REQUEST_GRACE)

    def quit_now(signame: str) -> None:
        if state.drain == "forced":
            return
        log.warning(
            "%s: stopping now, without waiting for %d connections", signame, len(server.connections)
        )
        server.close()
        stop_now()

    def log_statistics(signame: str) -> None:
        totals: dict[str, object] = {**server.stats(), **loop.stats()}
        top = loop.slow_sites(1)
        if top:
            # last, because a site has spaces in it: everything after `slow_site=` is the site
            totals["slow_site_count"] = top[0].iterations
            totals["slow_site_ms"] = top[0].total_ms
            totals["slow_site"] = top[0].site
        log.info("%s: statistics: %s", signame, " ".join(f"{k}={v}" for k, v in totals.items()))

    def ignore(signame: str) -> None:
        log.debug("%s ignored", signame)

    handlers: dict[str, Callable[[str], None]] = {
        "SIGINT": begin_shutdown,
        "SIGTERM": begin_shutdown,
        "SIGHUP": begin_shutdown,
        "SIGQUIT": quit_now,
        "SIGUSR1": log_statistics,
        "SIGUSR2": profiling.on_signal,
        "SIGALRM": ignore,
    }

    if on_start is not None:
        try:
            on_start(loop)
        except BaseException:
            server.close()
            loop.close()
            raise
    for signame, handler in handlers.items():
        signum = getattr(signal, signame, None)
        if signum is not None:
            loop.add_signal_handler(signum, handler, signame)
    server.start()
    if config.profile_seconds is not None:
        loop.call_soon(profiling.begin, config.profile_seconds, config.profile_out, "at start")
    if config.tls is None:
        tls = ""
    elif config.tls_client_certs:
        tls = "TLS on, client certificates required, "
    else:
        tls = "TLS on, "
    log.info(
        "listening on %s (%spoller %s, service %s, pid %d)",
        ", ".join(server.addresses),
        tls,
        loop.poller.name,
        config.service_name,
        os.getpid(),
    )
    exporter = _start_metrics(config, loop, server, service)
    try:
        loop.run_forever()
    finally:
        if exporter is not None:
            exporter.close()
        profiling.finish()
        server.close()
        for transport in list(server.connections):
            transport.abort()
        loop.stop()
        loop.run_forever()
        _end_tasks(loop, max(0.0, state.deadline - loop.time()))
        if server.drain_cut_short and state.drain == "complete":
            state.drain = "timeout"
        if on_close is not None:
            try:
                on_close(max(0.0, state.deadline - loop.time()))
            except Exception:
                log.exception("exception in on_close")
        totals: dict[str, object] = {**server.stats(), **loop.stats()}
        totals["drain"] = state.drain
        # logged before the loop restores the default handlers: a signal then cannot lose it
        log.info(
            "shutdown complete: %s",
            " ".join(f"{k}={v}" for k, v in totals.items()),
        )
        loop.close()
    return totals
