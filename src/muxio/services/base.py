"""What a service is: a protocol factory and the hooks around it, and the adapters to one.

Kept apart from the registry in `services/__init__.py` so that a service
module (`work`) can build a `Service` while the registry imports it lazily,
without the two importing each other.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from ..protocol import Protocol

if TYPE_CHECKING:
    from ..loop import EventLoop

ProtocolFactory = Callable[[], Protocol]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Servable = Callable[..., Any]
StartHook = Callable[["EventLoop"], object]
CloseHook = Callable[[float], object]


class Service:
    """A protocol factory, and the hooks that start and release what its protocols share.

    The hooks are given, never looked up on the factory: a factory that
    happens to have an `on_close` attribute must not have it called at
    shutdown.  `on_start(loop)` runs before the server listens (start a
    worker pool there); `on_close(seconds_left)` runs once the loop has
    stopped, with what is left of the shutdown timeout to release it in.
    """

    __slots__ = ("factory", "on_close", "on_start")

    def __init__(
        self,
        factory: ProtocolFactory,
        *,
        on_start: StartHook | None = None,
        on_close: CloseHook | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must build protocols, not be a {type(factory).__name__}")
        self.factory = factory
        self.on_start = on_start
        self.on_close = on_close

    def __repr__(self) -> str:
        hooks = [name for name in ("on_start", "on_close") if getattr(self, name) is not None]
        shown = f", hooks: {', '.join(hooks)}" if hooks else ""
        return f"<Service {getattr(self.factory, '__qualname__', self.factory)!r}{shown}>"


def stream_protocol_factory(handler: StreamHandler) -> ProtocolFactory:
    """Adapt `async def handler(reader, writer)` to a protocol factory.

    The loop is a full asyncio loop, so asyncio's own stream protocol does
    the buffering and flow control: the handler sees exactly what
    `asyncio.start_server` would give it.
    """

    def factory() -> Protocol:
        reader = asyncio.StreamReader()
        return cast(Protocol, asyncio.StreamReaderProtocol(reader, handler))

    return factory


def as_protocol_factory(service: Servable) -> ProtocolFactory:
    """A coroutine function is a stream handler; anything else builds protocols.

    It lives here, not in `serving`, because both `load_service` (a
    `module:handler` spec) and `muxio.serve` need it, and `serving` sits
    above `services`: importing upwards would make a cycle.
    """
    if inspect.iscoroutinefunction(service):
        return stream_protocol_factory(cast(StreamHandler, service))
    return cast(ProtocolFactory, service)
