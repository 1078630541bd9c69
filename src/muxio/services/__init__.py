"""Services: protocols that `muxio serve --service NAME` can run.

Each entry builds a `Service` from the parsed command line, so a service can
take options of its own without the CLI knowing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from .base import (
    CloseHook,
    ProtocolFactory,
    Servable,
    Service,
    StartHook,
    StreamHandler,
    as_protocol_factory,
    stream_protocol_factory,
)

ServiceBuilder = Callable[[Any], Service]


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
    "CloseHook",
    "ProtocolFactory",
    "Servable",
    "Service",
    "StartHook",
    "StreamHandler",
    "as_protocol_factory",
    "build_service",
    "load_service",
    "stream_protocol_factory",
]
