"""`MUXIO_POLLER` and `MUXIO_SLOW_CALLBACK_MS`: loop settings for code you cannot edit.

A loop named on someone else's command line (`uvicorn --loop
muxio:new_event_loop`, `muxio run -m hypercorn`) is made by a call muxio does
not write, so these variables are the only way to tune it.  Explicit arguments
always win; the variables are read at each loop creation, so a test or a
supervisor can change them between loops.
"""

from __future__ import annotations

import enum
import math
import os
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

POLLER_VAR = "MUXIO_POLLER"
SLOW_CALLBACK_VAR = "MUXIO_SLOW_CALLBACK_MS"
DEFAULT_SLOW_CALLBACK_MS = 100.0
MAX_SLOW_CALLBACK_MS = 3_600_000.0


class Unset(enum.Enum):
    """The default of a parameter the caller left out (None already means "off")."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "<from the environment>"


UNSET = Unset.UNSET


def env_poller(environ: Mapping[str, str] | None = None) -> str:
    """`MUXIO_POLLER`, checked against the pollers this OS has; `auto` when unset or empty."""
    from .pollers import available

    raw = (os.environ if environ is None else environ).get(POLLER_VAR, "")
    name = raw.strip().lower()
    if not name:
        return "auto"
    here = available()
    if name != "auto" and name not in here:
        raise UsageError(
            f"{POLLER_VAR}={raw!r}: not a poller here; choose one of "
            f"{', '.join(['auto', *here])} (or unset it for auto)"
        )
    return name


def env_slow_callback_ms(environ: Mapping[str, str] | None = None) -> float:
    """`MUXIO_SLOW_CALLBACK_MS` in milliseconds (0: watchdog off); 100 when unset or empty."""
    raw = (os.environ if environ is None else environ).get(SLOW_CALLBACK_VAR, "")
    if not raw.strip():
        return DEFAULT_SLOW_CALLBACK_MS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_SLOW_CALLBACK_MS):
        raise UsageError(
            f"{SLOW_CALLBACK_VAR}={raw!r}: use a number of milliseconds from 0 to "
            f"{int(MAX_SLOW_CALLBACK_MS)} (0 turns the slow-callback watchdog off)"
        )
    return value


def loop_settings(
    poller: str | None, slow_callback_ms: float | Unset | None
) -> tuple[str, float | None]:
    """What a loop gets: each argument the caller gave, else its variable, else the default."""
    if poller is None:
        poller = env_poller()
    if isinstance(slow_callback_ms, Unset):
        slow_callback_ms = env_slow_callback_ms()
    return poller, slow_callback_ms


__all__ = [
    "POLLER_VAR",
    "SLOW_CALLBACK_VAR",
    "UNSET",
    "Unset",
    "env_poller",
    "env_slow_callback_ms",
    "loop_settings",
]
