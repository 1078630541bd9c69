"""Services: protocols that `muxio serve --service NAME` can run.

Each entry builds a protocol factory from the parsed command line, so a
service can take options of its own without the CLI knowing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from ..protocol import Protocol

ProtocolFactory = Callable[[], Protocol]
ServiceBuilder = Callable[[Any], ProtocolFactory]


def _upper(options: Any) -> ProtocolFactory:
    from .upper import UpperEcho

    return UpperEcho


SERVICES: dict[str, ServiceBuilder] = {"upper": _upper}


def build_service(name: str, options: Any) -> ProtocolFactory:
    builder = SERVICES.get(name)
    if builder is None:
        raise UsageError(f"unknown service {name!r} (choose one of: {', '.join(SERVICES)})")
    return builder(options)
