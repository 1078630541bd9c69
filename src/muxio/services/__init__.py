"""Services: protocols that `muxio serve --service NAME` can run.

Each entry builds a `Service` from the parsed command line, so a service can
take options of its own without the CLI knowing them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from ..errors import UsageError
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


ServiceBuilder = Callable[[Any], Service]


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
    above `services`.
    """
    if inspect.iscoroutinefunction(service):
        return stream_protocol_factory(cast(StreamHandler, service))
    return cast(ProtocolFactory, service)


def _upper(options: Any) -> Service:
    from .upper import UpperEcho

    return Service(UpperEcho)


def _upper_streams(options: Any) -> Service:
    from .upper_streams import protocol_factory

    return Service(protocol_factory)  # type: ignore[arg-type]


def _work(options: Any) -> Service:
    from .work import build

    return build(options)


SERVICES: dict[str, ServiceBuilder] = {
    "upper": _upper,
    "upper-streams": _upper_streams,
    "work": _work,
}


def build_service(name: str, options: Any) -> Service:
    builder = SERVICES.get(name)
    if builder is not None:
        return builder(options)
    if ":" in name:
        return load_service(name)
    raise UsageError(
        f"unknown service {name!r} (choose one of: {', '.join(SERVICES)}, "
        "or module:factory for your own)"
    )


def load_service(spec: str) -> Service:
    """Import `module:attribute`, so your own protocol runs with all of `muxio serve`.

    The attribute is a `Service` (a factory with start/close hooks), a
    protocol factory (a Protocol class will do) or an
    `async def handler(reader, writer)`; every way the spec can be wrong
    is a usage error naming it, never a traceback.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"service {spec!r}: write module:factory, e.g. myapp.server:MyProtocol")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"service {spec!r}: cannot import {module_name!r} ({exc}; is it on PYTHONPATH?)"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"service {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(
                f"service {spec!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if isinstance(target, Service):
        return target
    if not callable(target):
        raise UsageError(
            f"service {spec!r}: {attribute!r} is a {type(target).__name__}, not a Service, "
            "a protocol factory or an async handler"
        )
    return Service(as_protocol_factory(target))


__all__ = [
    "ProtocolFactory",
    "Servable",
    "Service",
    "StreamHandler",
    "as_protocol_factory",
    "build_service",
    "load_service",
    "stream_protocol_factory",
]
