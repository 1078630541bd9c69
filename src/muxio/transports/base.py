"""What every muxio transport shares: the protocol slot, the way out, flow control.

The role of asyncio's `_SelectorTransport` + `_FlowControlMixin` and of
uvloop's `basetransport.pyx`: one fatal-error policy, one `connection_lost`
schedule and one flow-control rule for streams, datagrams and pipes, so the
kinds differ only in how they read and write.  The policy is asyncio's, since
asyncio's behaviour is the contract: an `OSError` is the peer's or the
network's doing and reaches the protocol through `connection_lost` only;
anything else is a bug worth the exception handler's attention.  A protocol
that raises in `pause_writing` / `resume_writing` is reported, not closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

from . import water_marks

if TYPE_CHECKING:
    from typing import Any


log = logging.getLogger("muxio")

WARN_AFTER_DROPPED_WRITES = 5
"""asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`."""
FAILED: Any = object()
"""What `_call_protocol` returns when the callback raised (and the transport is closing)."""


class InContext(functools.partial):  # type: ignore[type-arg]
    """`InContext(context.run, bound_method)`: what a transport hands the poller.

    asyncio runs each reader and writer in the context its handle captured
    when it was registered; a partial of `Context.run` does the same with one
    C call per event and no Python frame.  `__self__` and `__name__` name the
    transport's method, so the loop's checks (`add_reader` on a transport's
    descriptor) and messages see the method and not the partial.
    """

    __slots__ = ()

    @property
    def __self__(self) -> Any:
        return self.args[0].__self__

    @property
    def __name__(self) -> str:
        name: str = self.args[0].__name__
        return name


class TransportBase(asyncio.BaseTransport):
    """One descriptor, one protocol, and the single path by which they part.

    `_closing`: no new work is accepted (close(), abort(), EOF or an error).
    `_lost`: `connection_lost` is scheduled or done; it runs once, on a later
    loop turn, never from inside the protocol callback that caused it, and
    afterwards the protocol slot is None, which breaks the transport <->
    protocol cycle so both are freed by reference counting.
    """

    __slots__ = (
        "__weakref__",
        "_closing",
        "_fd",
        "_loop",
        "_lost",
        "_protocol",
        "_writes_after_loss",
    )

    _loop: Any
    _protocol: Any

    def _init_base(self, loop: Any, fd: int, protocol: Any) -> None:
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._closing = False
        self._lost = False
        self._writes_after_loss = 0

    def get_loop(self) -> Any:
        return self._loop

    def get_protocol(self) -> Any:
        """The protocol, or None once `connection_lost` has run, as in asyncio."""
        return self._protocol

    def set_protocol(self, protocol: Any) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    # -- failing -------------------------------------------------------------

    def _is_quiet(self, exc: BaseException) -> bool:
        """Whether `exc` is the peer's doing rather than a bug (asyncio's rule)."""
        return isinstance(exc, OSError)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if self._is_quiet(exc):
            if self._loop.get_debug():
                log.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._report(exc, message)
        self._force_close(exc)

    def _call_protocol(self, method: str, *args: Any) -> Any:
        """Run a protocol callback off the hot path; its failure is fatal, as in asyncio.

        Returns what the callback returned, or `FAILED`.  `SystemExit` and
        `KeyboardInterrupt` go on to whoever runs the loop; any other
        `BaseException` (a `CancelledError` too) closes the transport.
        """
        try:
            return getattr(self._protocol, method)(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, f"Fatal error: protocol.{method}() call failed.")
            return FAILED

    def _report(self, exc: BaseException, message: str) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    def _drop_write(self, message: str) -> None:
        """A write after the end is dropped, and logged past a few, as in asyncio."""
        self._writes_after_loss += 1
        if self._writes_after_loss >= WARN_AFTER_DROPPED_WRITES:
            log.warning(message)

    # -- the way out ---------------------------------------------------------

    def _force_close(self, exc: BaseException | None) -> None:
        """Close now, dropping what is buffered; `exc` goes to `connection_lost`."""
        if self._lost:
            return
        self._closing = True
        self._lose(exc)

    def _lose(self, exc: BaseException | None) -> None:
        """Leave the poller now; tell the protocol on the next loop turn."""
        if self._lost:
            return
        self._lost = True
        self._unwatch(exc)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _unwatch(self, exc: BaseException | None) -> None:
        """Take the descriptor out of the poller (each kind knows how it is watched)."""
        raise NotImplementedError

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            protocol = self._protocol
            if protocol is not None:
                protocol.connection_lost(exc)
        finally:
            self._protocol = None
            self._release()

    def _release(self) -> None:
        """Close the socket or pipe once the protocol has heard."""
        raise NotImplementedError


class FlowControlTransport(TransportBase):
    """A transport with a write buffer: asyncio's `_FlowControlMixin`.

    `_buffered` counts what the water marks are compared with; `_buffer` is
    each kind's own (a list, a deque, or None until first needed).
    """

    __slots__ = ("_buffer", "_buffered", "_high_water", "_low_water", "_protocol_paused")

    _buffer: Any
    high_water = 64 * 1024
    low_water = 16 * 1024

    def _init_flow_control(self) -> None:
        self._buffered = 0
        self._high_water = self.high_water
        self._low_water = self.low_water
        self._protocol_paused = False

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high_water, self._low_water = water_marks(high, low, self.high_water)
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._buffered > self._high_water and not self._protocol_paused:
            self._protocol_paused = True
            self._tell_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self._buffered <= self._low_water:
            self._protocol_paused = False
            self._tell_protocol("resume_writing")

    def _tell_protocol(self, method: str) -> None:
        """Flow control is advice: a protocol that fails to take it is reported, not closed."""
        try:
            getattr(self._protocol, method)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._report(exc, f"protocol.{method}() failed")

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        if self._buffer:
            self._buffer.clear()
        self._buffered = 0
        self._closing = True
        self._lose(exc)
