"""Errors that name what was wrong and which parameter to change.

Library code raises these instead of printing, so the same failure reads the
same whether it comes from `muxio serve`, `muxio bench` or a user's script;
only the command line (`muxio.cli.run_reporting`) turns them into a line on
stderr and an exit code.
"""

from __future__ import annotations


class MuxioError(Exception):
    """Base of muxio's own errors: a message for a person, never a traceback."""


class UsageError(MuxioError):
    """The caller asked for something that cannot work as written: change a parameter."""


class RuntimeFailure(MuxioError):
    """The request was well formed but the system refused it: retrying may work."""

