"""Errors that the command line turns into one line on stderr and an exit code.

Library code raises these instead of printing, so the same failure reads the
same whether it comes from `muxio serve`, `muxio bench` or a user's script.
"""

from __future__ import annotations


class MuxioError(Exception):
    """Base of muxio's own errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(MuxioError):
    """The user asked for something that cannot work as written (exit code 2)."""

    exit_code = 2


class RuntimeFailure(MuxioError):
    """The request was well formed but the system refused it (exit code 1)."""

    exit_code = 1
