"""Services: protocols that `muxio serve --service NAME` can run.

Each entry builds a protocol factory from the parsed command line, so a
service can take options of its own without the CLI knowing them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UsageError
from ..protocol import Protocol

TYPE_CHECKING = False  # not `from typing`: importing typing costs 1.6 MiB of RSS

if TYPE_CHECKING:
    from typing import Any

ProtocolFactory = Callable[[], Protocol]
ServiceBuilder = Callable[["Any"], ProtocolFactory]


def _upper(options: Any) -> ProtocolFactory:
    from .upper import UpperEcho

    return UpperEcho


def _upper_streams(options: Any) -> ProtocolFactory:
    from .upper_streams import protocol_factory

    return protocol_factory  # type: ignore[return-value]


def _work(options: Any) -> ProtocolFactory:
    from .work import build

    return build(options)


SERVICES: dict[str, ServiceBuilder] = {
    "upper": _upper,
    "upper-streams": _upper_streams,
    "work": _work,
}


def build_service(name: str, options: Any) -> ProtocolFactory:
    builder = SERVICES.get(name)
    if builder is None:
        raise UsageError(f"unknown service {name!r} (choose one of: {', '.join(SERVICES)})")
    return builder(options)
