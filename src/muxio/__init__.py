"""muxio: event-driven TCP servers in pure Python, one thread, any poller."""

from __future__ import annotations

from .errors import MuxioError, RuntimeFailure, UsageError
from .listeners import bind_tcp, bind_unix
from .loop import EventLoop, Handle, LoopHealth, TimerHandle
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

__all__ = [
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
]
