"""`muxio run [-m module | script.py] [args...]`: any program, on muxio's loop.

The policy is installed before the program's first line, so every
`asyncio.run()`, `asyncio.Runner()` or `new_event_loop()` it makes without
naming a loop gets muxio's.  Its Python children (uvicorn and hypercorn
`--workers`, multiprocessing's spawn) start from scratch, so `MUXIO_RUN=1` and
a `PYTHONPATH` entry for the `sitecustomize.py` in `_run_site/` go with them:
Python imports that file at start-up, before the child's own code, and it
installs the same policy (then hands over to any `sitecustomize` it shadows).

A policy only reaches code that asks for one.  uvicorn's command line (from
0.36) hands `asyncio.Runner` a loop factory of its own, `--loop auto` being
`asyncio.SelectorEventLoop` when uvloop is absent, so the policy was never
asked and uvicorn ran on asyncio's loop; `UVICORN_LOOP=none` (its option
`--loop none`, set only if the environment has no `UVICORN_LOOP`; a `--loop`
on the command line still wins) makes it ask.  `uvicorn.run()` called from
code takes no environment: that takes `loop="muxio:new_event_loop"`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from collections.abc import MutableMapping

RUN_VAR = "MUXIO_RUN"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_run_site")

USAGE = """\
usage: muxio run [-m module | script.py] [args ...]

Run a Python program with muxio as its event loop, as `python -m module` or
`python script.py` would run it: every loop the program (and the Python
processes it starts) makes without naming one is muxio's.  MUXIO_POLLER and
MUXIO_SLOW_CALLBACK_MS tune those loops.  The exit code is the program's.
"""


def install_policy() -> None:
    """Every loop asyncio makes without a loop_factory is a muxio loop from now on."""
    from .policy import EventLoopPolicy

    # 3.14 deprecates the public setter (asyncio.run and Runner still ask the policy
    # when given no loop_factory); its private twin does the same without the warning.
    setter = getattr(asyncio.events, "_set_event_loop_policy", None) or (
        asyncio.set_event_loop_policy
    )
    setter(EventLoopPolicy())


def child_environment(environ: MutableMapping[str, str]) -> None:
    """What Python children need to find the policy: MUXIO_RUN, PYTHONPATH (and UVICORN_LOOP)."""
    environ[RUN_VAR] = "1"
    environ.setdefault("UVICORN_LOOP", "none")  # uvicorn's CLI then asks the policy
    path = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_DIR]
    environ["PYTHONPATH"] = os.pathsep.join([SITE_DIR, *path])


def _check_module(name: str) -> None:
    """A missing module is the caller's typo: one line, not runpy's traceback."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UsageError(
            f"run -m {name}: no module named {name!r} in this Python ({sys.executable}); "
            "check the name or install it"
        )
    if spec.submodule_search_locations is not None:
        try:
            main_spec = importlib.util.find_spec(f"{name}.__main__")
        except ImportError:
            main_spec = None
        if main_spec is None:
            raise UsageError(
                f"run -m {name}: {name!r} is a package with no __main__ module; "
                "name the module inside it that runs the program"
            )


def parse(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(module, script, the program's own arguments); everything after the target is theirs."""
    if not argv:
        raise UsageError("run needs a program: muxio run -m module [args] or muxio run script.py")
    first = argv[0]
    if first == "-m":
        if len(argv) < 2 or not argv[1]:
            raise UsageError("run -m needs a module name, as python -m takes it")
        return argv[1], None, argv[2:]
    if first.startswith("-m") and len(first) > 2:
        return first[2:], None, argv[1:]
    if first.startswith("-") and first != "-":
        raise UsageError(
            f"run: unknown option {first!r} (only -m module; put the program's own "
            "options after the module or script)"
        )
    return None, first, argv[1:]


def main(argv: list[str]) -> int:
    """Run the program in this process; its SystemExit is our exit."""
    import runpy

    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    module, script, rest = parse(argv)
    from .loopenv import UNSET, loop_settings

    loop_settings(None, UNSET)  # a bad MUXIO_* variable: one line now, not in each worker
    if module is not None:
        # python -m looks in the current directory first, not where `muxio` was found
        sys.path[0:1] = [os.getcwd()]
        _check_module(module)
    else:
        assert script is not None
        if not os.path.exists(script):
            raise UsageError(f"run {script}: no such file (check the path)")
        sys.path[0:1] = [os.path.dirname(os.path.abspath(script))]
    child_environment(os.environ)
    install_policy()
    if module is not None:
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        assert script is not None
        sys.argv = [script, *rest]
        runpy.run_path(script, run_name="__main__")
    return 0


__all__ = ["RUN_VAR", "SITE_DIR", "child_environment", "install_policy", "main"]
