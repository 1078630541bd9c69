"""Errors that the command line turns into one line on stderr and an exit code.

Library code raises these instead of printing, so the same failure reads the
same whether it comes from `muxio serve`, `muxio bench` or a user's script.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class MuxioError(Exception):
    """Base of muxio's own errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(MuxioError):
    """The user asked for something that cannot work as written (exit code 2)."""

    exit_code = 2


class RuntimeFailure(MuxioError):
    """The request was well formed but the system refused it (exit code 1)."""

    exit_code = 1


def run_reporting(main: Callable[[], int]) -> int:
    """Run a command's body and turn muxio's errors into one line and an exit code.

    Shared by `muxio` and the tools' `python -m` entry points, so every way of
    starting a command fails alike and no user mistake ends in a traceback.
    """
    try:
        return main()
    except MuxioError as exc:
        print(f"muxio: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early, as by `| head`: nothing left to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
