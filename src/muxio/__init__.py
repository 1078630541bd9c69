"""muxio: event-driven TCP servers in pure Python, one thread, any poller."""

from __future__ import annotations

from . import _build  # first: under MUXIO_PURE=1 every module below loads from its .py
from .errors import MuxioError, RuntimeFailure, UsageError
from .listeners import bind_tcp, bind_unix
from .loop import EventLoop, Handle, LoopHealth, TimerHandle
from .metrics import serve_metrics
from .monitor import HealthSnapshot, Monitor, monitor
from .offload import Offloader, OrderedReplies
from .policy import EventLoopPolicy, new_event_loop, run
from .pollers import Poller, available, get_poller_class, new_poller
from .protocol import BaseProtocol, Protocol
from .server import Server
from .services import Service
from .serving import serve
from .transports.stream import Transport

__version__ = "0.1.0"

COMPILED: bool = bool(_build.compiled_modules())
"""True when the compiled build runs (see `muxio --version`); False for pure Python."""

__all__ = [
    "COMPILED",
    "BaseProtocol",
    "EventLoop",
    "EventLoopPolicy",
    "Handle",
    "HealthSnapshot",
    "LoopHealth",
    "Monitor",
    "MuxioError",
    "Offloader",
    "OrderedReplies",
    "Poller",
    "Protocol",
    "RuntimeFailure",
    "Server",
    "Service",
    "TimerHandle",
    "Transport",
    "UsageError",
    "available",
    "bind_tcp",
    "bind_unix",
    "get_poller_class",
    "monitor",
    "new_event_loop",
    "new_poller",
    "run",
    "serve",
    "serve_metrics",
]
