"""Listening sockets, the accept path, connection limits and graceful shutdown.

`Server` takes sockets that are already bound and listening, so where they
come from — `muxio.listeners` (`bind_tcp`, `bind_unix`), systemd's socket
activation, a parent process sharing one port between workers — is not its
concern.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from asyncio import trsock
from collections.abc import Callable, Iterable
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any

from .listeners import UnixFile
from .pollers import FdTooLargeError
from .protocol import protocol_busy
from .transports.stream import TrafficJudgedTransport, Transport, UncountedTransport

if TYPE_CHECKING:
    from .loop import EventLoop

log = logging.getLogger("muxio")

ProtocolFactory = Callable[[], "asyncio.BaseProtocol"]

_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_WAIT_CLOSED_WAITS_FOR_CONNECTIONS = sys.version_info >= (3, 12, 1)
"""gh-79033: before 3.12.1, `wait_closed()` on a closed server returns at once."""
_ACCEPT_RETRY = 0.5
_QUEUED_ACCEPTS_MAX = 4096
"""Linux's largest default accept queue (`net.core.somaxconn`): what a shutdown takes at most."""


class RateLimitedWarning:
    """Log a warning at most once per `interval` seconds, counting the rest."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = -interval
        self.suppressed = 0
        self.total = 0

    def warn(self, msg: str, *args: object) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += f" ({self.suppressed} more since the last warning)"
            self.suppressed = 0
        self._last = now
        log.warning(msg, *args)


class ServerCounters:
    """Totals of connections gone; the open ones are added when `stats()` asks."""

    __slots__ = (
        "bytes_in", "bytes_out", "connections", "handshake_failed", "idle_closed", "refused"
    )

    def __init__(self) -> None:
        self.connections = 0
        """Accepted and handed to a protocol; a refused connection never is."""
        self.refused = 0
        """Accepted, then closed at once: over `max_connections`, or a descriptor the
        poller cannot watch."""
        self.handshake_failed = 0
        self.idle_closed = 0
        self.bytes_in = 0
        self.bytes_out = 0


_tls_protocol_class: Any = None


def _tls_protocol(server: Server) -> Any:
    """asyncio's `SSLProtocol`, reporting a handshake that failed to `server`.

    `sslproto` logs such a failure only in debug mode and never tells the
    application protocol (it was not connected yet), so a server that must
    count and log them has to hear of the lost connection itself.  A subclass
    sees it in `connection_lost`, with the error, at no cost per byte (a
    wrapper protocol would sit on the read path).  Built on first use: most
    servers never import `ssl`.
    """
    global _tls_protocol_class
    if _tls_protocol_class is None:
        from .transports.tls import SharedBufferSSLProtocol

        class ServerTLSProtocol(SharedBufferSSLProtocol):
            _muxio_server: Server

            def connection_lost(self, exc: BaseException | None) -> None:
                if exc is not None and "ssl_object" not in self._extra:
                    self._muxio_server._handshake_failed(self._transport, exc)
                super().connection_lost(exc)

        _tls_protocol_class = ServerTLSProtocol
    cls = _tls_protocol_class
    return type(cls.__name__, (cls,), {"_muxio_server": server})


def _tls_goodbye(transport: Transport) -> bool:
    """Drive a draining TLS connection to its close_notify; True once that is sent.

    The TCP transport beneath has stopped reading, so no new request gets
    in.  Once every request it did read is answered and flushed, the TLS
    layer is closed: its close_notify goes out, and the TCP transport's own
    drain (FIN, then discard until the peer closes) finishes the job.
    Closing the TLS layer any earlier would drop replies: `sslproto` discards
    writes once closing, and its `unwrap()` fails on unread application
    data, aborting the connection with its buffers.
    """
    tls = transport.get_protocol()
    app = getattr(tls, "_app_transport", None)
    if app is None or app.is_closing():
        return True  # still in its handshake (nothing to answer), or already said goodbye
    if transport.get_write_buffer_size() or app.get_write_buffer_size():
        return False
    if protocol_busy(getattr(tls, "_app_protocol", None)):
        return False
    # 3.11+ buffers input for an app that paused reading: it must be answered first
    if sys.version_info >= (3, 11) and not app.is_reading():
        return False
    app.close()
    return not app.get_write_buffer_size()


def format_address(sock: socket.socket) -> str:
    addr = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return str(addr)
    if sock.family == socket.AF_INET6:
        return f"[{addr[0]}]:{addr[1]}"
    return f"{addr[0]}:{addr[1]}"


class Server(asyncio.AbstractServer):
    """Accepts connections on listening sockets and runs a protocol on each.

    `max_connections` refuses (closes at once) what comes past the limit,
    `idle_timeout` closes connections silent in both directions, and running
    out of descriptors pauses accepting instead of spinning on a listening
    socket that stays readable.  It is also what `loop.create_server()`
    returns, with asyncio's `Server` API (`serve_forever`, `wait_closed`,
    `close_clients`, …) and the running Python's semantics for
    `wait_closed()` (see there).

    Idle connections are found by one periodic sweep over the open
    connections, every `idle_timeout / 2` seconds, rather than by a timer per
    connection: a timer outlives its connection (a heap entry holding the
    transport and protocol until it fires), so a storm of short connections
    would pin memory for the whole timeout.  The sweep only sees what is open,
    so a closed connection costs nothing; a silent connection is closed after
    between `idle_timeout` and 1.5 times `idle_timeout` seconds.

    `judge_traffic` (what `muxio serve` asks for) makes `shutdown()` wait
    for a plain asyncio protocol that read data and has written nothing
    since, as for a busy one: such a protocol cannot say it still owes a
    reply.  It costs those protocols' reads a little, and nothing to the
    others.
    """

    accepts_per_event = 128
    """Accepts per readiness event: a burst of connects cannot starve reads."""

    def __init__(
        self,
        loop: EventLoop,
        protocol_factory: ProtocolFactory,
        sockets: list[socket.socket],
        *,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        unlink_on_close: bool = True,
        unix_files: Iterable[UnixFile] = (),
        count_bytes: bool = True,
        judge_traffic: bool = False,
    ) -> None:
        self.loop = loop
        self.protocol_factory = protocol_factory
        self._sockets: list[socket.socket] | None = list(sockets)
        self._backlog = backlog
        self._ssl = ssl
        self._tls_class: Any = _tls_protocol(self) if ssl is not None else None
        self._tls_warning = RateLimitedWarning()
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._unix_files: list[UnixFile] = []
        """Socket files to remove at close (if still ours): each listener's `bound_file`."""
        if unlink_on_close:
            self._unix_files += unix_files
            for sock in sockets:
                bound = getattr(sock, "bound_file", None)
                if bound is not None:
                    self._unix_files.append(bound)
        self._transport_class: type[Transport] = (
            Transport if count_bytes or idle_timeout else UncountedTransport
        )
        """Byte counts feed the summary and idle detection; asyncio's API needs neither."""
        if judge_traffic and ssl is None and self._transport_class is Transport:
            # TCP only: over TLS the transport sees records, not requests
            self._transport_class = TrafficJudgedTransport
        self._serving_forever: asyncio.Future[None] | None = None
        self._waiters: list[asyncio.Future[None]] | None = []
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[Transport] = set()
        self._counters = ServerCounters()
        self._listening = False
        self._accept_paused = False
        self._resume_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._refused_warning = RateLimitedWarning()
        self._fd_warning = RateLimitedWarning()
        self._shutdown_deadline = 0.0
        self._first_request_deadline = 0.0
        self.drain_cut_short = False
        """True once `shutdown()` had to abort connections that did not finish in time."""
        self._on_closed: Callable[[], object] | None = None
        self._context: Context | None = None
        """Where serving began; each connection gets a copy, as asyncio's accept task does."""
        # asyncio's names for what it never changes; libraries' test helpers read them
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl

    @property
    def _serving(self) -> bool:
        return self._listening

    @property
    def _active_count(self) -> int:
        return len(self.connections)

    @property
    def _clients(self) -> set[Transport]:
        return self.connections

    @property
    def _serving_forever_fut(self) -> asyncio.Future[None] | None:
        return self._serving_forever

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        """The listening sockets, wrapped as asyncio does; empty once closed."""
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    @property
    def addresses(self) -> list[str]:
        return [format_address(s) for s in self._sockets or ()]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sockets={self.addresses!r}>"

    def start(self) -> None:
        if self._listening or self._sockets is None:
            return
        self._listening = True
        self._context = copy_context()
        self._watch_listeners()
        if self.idle_timeout and self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.idle_timeout / 2, self._sweep_idle)

    def _watch_listeners(self) -> None:
        for sock in self._sockets or ():
            self.loop._add_reader(sock.fileno(), self._make_acceptor(sock))

    def _unwatch_listeners(self) -> None:
        for sock in self._sockets or ():
            self.loop._remove_reader(sock.fileno())

    # -- asyncio's Server API --------------------------------------------------

    def get_loop(self) -> EventLoop:
        return self.loop

    def is_serving(self) -> bool:
        return self._listening

    async def start_serving(self) -> None:
        self.start()
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self.start()
        self._serving_forever = self.loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    async def wait_closed(self) -> None:
        """As the running Python's asyncio: wait for `close()` and the last connection.

        Before 3.12.1, a server already closed returns at once, even with
        connections open (a 3.11-era `close(); await wait_closed()` must not
        hang on an idle client); `_wait_drained()` always waits for them.
        """
        if self._sockets is None and not _WAIT_CLOSED_WAITS_FOR_CONNECTIONS:
            return
        await self._wait_drained()

    async def _wait_drained(self) -> None:
        """Until the server is closed and its last connection is gone, on every Python."""
        if self._waiters is None:
            return
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def close_clients(self) -> None:
        for transport in list(self.connections):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self.connections):
            transport.abort()

    def _make_acceptor(self, lsock: socket.socket) -> Callable[..., None]:
        accept = lsock.accept
        is_tcp = lsock.family in (socket.AF_INET, socket.AF_INET6)

        def on_acceptable(limit: int = self.accepts_per_event) -> None:
            for _ in range(limit):
                try:
                    conn, _ = accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                        continue
                    self._accept_failed(exc)
                    return
                self._new_connection(conn, is_tcp)

        return on_acceptable

    def _new_connection(self, conn: socket.socket, is_tcp: bool) -> None:
        """Set up one accepted connection; nothing a protocol does here can leak `conn`."""
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            self._counters.refused += 1
            conn.close()
            self._refused_warning.warn(
                "refused a connection: %d connections open, the max_connections limit",
                len(self.connections),
            )
            return
        conn.setblocking(False)
        if is_tcp:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = self._context.copy() if self._context is not None else copy_context()
        try:
            protocol: Any = ctx.run(self.protocol_factory)
            if self._ssl is not None:
                before_tls = getattr(protocol, "wrap_service", None)
                if before_tls is not None:
                    before_tls(self._tls_layer)
                else:
                    protocol = self._tls_layer(protocol)
        except Exception as exc:
            conn.close()
            self.loop.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
            )
            return
        transport = self._transport_class(self.loop, conn, protocol)
        try:
            transport.start(self._connection_lost, ctx)
        except FdTooLargeError as exc:
            self._counters.refused += 1
            conn.close()
            self._fd_warning.warn(
                "closed a new connection: %s; the poll or epoll poller "
                "serves more than %d connections",
                exc,
                self.loop.poller.max_fd or 0,
            )
            return
        self.connections.add(transport)
        self._counters.connections += 1
        if self.idle_timeout:
            transport.idle_mark = (0, self.loop.time())

    def _tls_layer(self, protocol: Any) -> Any:
        """The TLS layer between the connection and `protocol`.

        A protocol from the factory that reads the raw stream itself (the
        PROXY gate: a balancer sends its header before the ClientHello)
        has a `wrap_service(wrap)` method; it then gets this layer to put
        between itself and the service it hands the connection to.
        """
        return self.loop._ssl_protocol(
            protocol,
            self._ssl,
            server_side=True,
            handshake_timeout=self._ssl_handshake_timeout,
            shutdown_timeout=self._ssl_shutdown_timeout,
            cls=self._tls_class,
        )

    def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in _OUT_OF_FDS:
            self._fd_warning.warn(
                "cannot accept: %s (%d connections open); pausing accepts until "
                "descriptors are free (raise the limit with ulimit -n)",
                exc.strerror,
                len(self.connections),
            )
        else:
            log.error("accept failed: %s; retrying in %.1f s", exc, _ACCEPT_RETRY)
        self._pause_accepting()

    def _pause_accepting(self) -> None:
        if self._accept_paused:
            return
        self._accept_paused = True
        self._unwatch_listeners()
        self._resume_timer = self.loop.call_later(_ACCEPT_RETRY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if self._accept_paused and self._listening:
            self._accept_paused = False
            self._watch_listeners()

    def _connection_lost(self, transport: Transport) -> None:
        self.connections.discard(transport)
        self._counters.bytes_in += transport.bytes_in
        self._counters.bytes_out += transport.bytes_out
        if self._accept_paused:
            self._resume_accepting()
        if self._on_closed is not None and not self.connections:
            self._finish_shutdown()
        if self._sockets is None and not self.connections:
            self._wake_waiters()

    def _handshake_failed(
        self, transport: asyncio.BaseTransport | None, exc: BaseException
    ) -> None:
        self._counters.handshake_failed += 1
        peer = transport.get_extra_info("peername") if transport is not None else None
        where = f" with {peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        reason = str(exc) or (
            "the client closed the connection"
            if isinstance(exc, ConnectionResetError)
            else type(exc).__name__
        )
        self._tls_warning.warn("TLS handshake%s failed: %s", where, reason)

    def _sweep_idle(self) -> None:
        """Close what was silent for `idle_timeout`; note activity on the rest."""
        timeout = self.idle_timeout
        assert timeout
        now = self.loop.time()
        for transport in list(self.connections):
            if transport.is_closing():
                continue
            total = transport.bytes_in + transport.bytes_out
            mark, since = transport.idle_mark
            if total != mark:
                transport.idle_mark = (total, now)
            elif now - since >= timeout:
                self._counters.idle_closed += 1
                log.debug("closing %s: idle for %.1f s", transport, now - since)
                if transport.get_write_buffer_size():
                    transport.abort()
                else:
                    transport.close()
        self._idle_timer = self.loop.call_later(timeout / 2, self._sweep_idle)

    # -- totals and shutdown -------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A snapshot of what the server did, as `EventLoop.stats()` and `Offloader.stats()`.

        ``connections``: accepted and served (open or gone); ``refused``:
        accepted, then closed at once (over `max_connections`, or beyond
        what the poller can watch); ``open``: served right now;
        ``idle_closed``: closed by `idle_timeout`; ``bytes_in`` /
        ``bytes_out``: on the wire, open connections included;
        ``tls_handshakes_failed``: TLS clients that never got through (0
        without TLS).  A new dict each call.
        """
        c = self._counters
        return {
            "connections": c.connections,
            "refused": c.refused,
            "open": len(self.connections),
            "idle_closed": c.idle_closed,
            "bytes_in": c.bytes_in + sum(t.bytes_in for t in self.connections),
            "bytes_out": c.bytes_out + sum(t.bytes_out for t in self.connections),
            "tls_handshakes_failed": c.handshake_failed,
        }

    def close(self) -> None:
        """Stop accepting and close the listening sockets, started or not.

        Open connections go on; `_wait_drained()` returns when the last is gone.
        """
        sockets = self._sockets
        if sockets is None:
            return
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._listening and not self._accept_paused:
            self._unwatch_listeners()
        self._listening = False
        self._sockets = None
        for sock in sockets:
            sock.close()
        for unix_file in self._unix_files:
            unix_file.remove()
        self._unix_files = []
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        if not self.connections:
            self._wake_waiters()

    def is_shutting_down(self) -> bool:
        return self._on_closed is not None

    def shutdown(
        self, timeout: float, on_closed: Callable[[], object], *, first_request_grace: float = 0.0
    ) -> None:
        """Stop accepting, flush every pending reply, close, then `on_closed()`.

        Connections that cannot finish within `timeout` seconds (a peer that
        never reads) are aborted, so shutdown always ends.  A connection
        accepted a moment before has its first request on the way; stopping
        its reading at once would close it unanswered, and a client that got
        nothing on a new connection cannot tell that from a request read and
        dropped.  So one that has not sent a byte yet keeps reading for up to
        `first_request_grace` seconds (within `timeout`), and what it sends is
        answered before the close.  Without byte counts (asyncio's API) no
        connection can be told apart, and none waits.
        """
        if self._on_closed is not None:
            return
        if self._listening and not self._accept_paused:
            self._accept_queued()
        self.close()
        self._on_closed = on_closed
        now = self.loop.time()
        self._shutdown_deadline = now + timeout
        if self._transport_class is UncountedTransport:
            first_request_grace = 0.0
        self._first_request_deadline = now + min(first_request_grace, timeout)
        self._shutdown_tick()

    def _accept_queued(self) -> None:
        """Take the connections the kernel completed before the listeners close.

        Closing a listening socket resets what waits in its accept queue
        (when no other process holds the socket: a supervisor's workers
        share theirs), and those clients did connect before the shutdown:
        they are served like the connections accepted a moment before, with
        the first-request grace.
        """
        for sock in self._sockets or ():
            self._make_acceptor(sock)(_QUEUED_ACCEPTS_MAX)

    def _shutdown_tick(self) -> None:
        if self._on_closed is None:
            return
        now = self.loop.time()
        if now >= self._shutdown_deadline:
            if self.connections:
                self.drain_cut_short = True
                log.warning(
                    "shutdown timeout: aborting %d connections that did not finish",
                    len(self.connections),
                )
            for transport in list(self.connections):
                transport.abort()
        else:
            hearing_first = now < self._first_request_deadline
            for transport in list(self.connections):
                if hearing_first and not transport.bytes_in:
                    continue
                transport.begin_shutdown()  # once; what it has read is answered still
                if self._ssl is not None and not _tls_goodbye(transport):
                    continue
                if transport.half_close_if_idle():
                    transport.close_when_acknowledged()
        if not self.connections:
            self._finish_shutdown()
        else:
            self.loop.call_later(0.02, self._shutdown_tick)

    def _finish_shutdown(self) -> None:
        callback, self._on_closed = self._on_closed, None
        if callback is not None:
            self.loop.call_soon(callback)
