"""What a worker process is told, and the error for a setting that cannot work.

At the bottom of the package so that the worker, the orchestration and the
command line agree on one description of a run without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from muxio.errors import UsageError

Check = Callable[[bytes, bytes], "str | None"]
"""`check(request, reply)`: None if the reply is right, else what is wrong with it.

Both lines come without their newline.  It runs in the worker processes, so
it must pickle (a module-level function) when they are spawned, not forked.
"""

PROTOCOLS = ("echo", "line")


class BadSetting(UsageError):
    """A `run_bench` argument that cannot work; names the parameter so a CLI can name its flag."""

    def __init__(self, parameter: str, value: object, problem: str) -> None:
        super().__init__(f"{parameter}={value!r}: {problem}")
        self.parameter = parameter
        self.value = value
        self.problem = problem


@dataclass(frozen=True)
class TLSOptions:
    """How to speak TLS: each worker builds its own context from these (contexts do not pickle)."""

    ca: str | None = None
    insecure: bool = False
    server_name: str | None = None

    def context(self) -> Any:
        from muxio.tls import client_context

        return client_context(self.ca, insecure=self.insecure)


@dataclass(frozen=True)
class WorkerConfig:
    family: int
    address: Any
    active: int
    idle: int
    size: int
    warmup: float
    duration: float
    stall_timeout: float
    connect_timeout: float
    seed: int
    cpus: tuple[int, ...] | None
    tls: TLSOptions | None = None
    reconnect: bool = False
    first_index: int = 0
    """Connections are numbered across workers, so an error names one the user can count."""
    protocol: str = "echo"
    requests: Sequence[bytes] = ()
    check: Check | None = None
    pipeline: int = 1
    rate: float | None = None
