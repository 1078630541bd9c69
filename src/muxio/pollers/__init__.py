"""Pollers: one small interface, one short module per kernel mechanism.

`get_poller_class("auto")` picks the best the OS has, in the order epoll,
kqueue, devpoll, poll, select.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import READ, WRITE, FdTooLargeError, Poller
from .devpoll import DevpollPoller
from .epoll import EpollPoller
from .kqueue import KqueuePoller
from .poll import PollPoller
from .select import SelectPoller

BACKENDS: dict[str, type[Poller]] = {
    cls.name: cls
    for cls in (EpollPoller, KqueuePoller, DevpollPoller, PollPoller, SelectPoller)
}
"""Every backend, best first."""


def available() -> list[str]:
    """Names of the backends this OS provides, best first."""
    return [name for name, cls in BACKENDS.items() if cls.available()]


def get_poller_class(name: str = "auto") -> type[Poller]:
    """Resolve a user-facing name, with an error that says what to choose instead."""
    here = available()
    if name == "auto":
        return BACKENDS[here[0]]
    cls = BACKENDS.get(name)
    if cls is None:
        raise UsageError(
            f"unknown poller {name!r} (choose one of: auto, {', '.join(BACKENDS)})"
        )
    if not cls.available():
        raise UsageError(
            f"poller {name!r} is not available on this system "
            f"(available here: {', '.join(here)}; or auto: the best of them)"
        )
    return cls


def new_poller(name: str = "auto") -> Poller:
    return get_poller_class(name)()


__all__ = [
    "BACKENDS",
    "READ",
    "WRITE",
    "FdTooLargeError",
    "Poller",
    "available",
    "get_poller_class",
    "new_poller",
]
