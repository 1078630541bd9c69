"""Start-up hook of `muxio run`'s Python children: muxio's policy before their own code.

`muxio run` puts this directory first on PYTHONPATH, so Python imports this
file instead of any other `sitecustomize`; the one it shadows is imported
right after, so a system or virtualenv hook still runs.
"""

from __future__ import annotations

import os
import sys


def _install() -> None:
    if os.environ.get("MUXIO_RUN") != "1":
        return
    try:
        from muxio.launch import install_policy
    except ImportError:
        return  # another Python without muxio: it runs as it would have
    try:
        install_policy()
    except Exception as exc:  # a child must start even if muxio cannot be set up
        print(f"muxio: the event loop policy was not installed: {exc}", file=sys.stderr)


def _chain() -> None:
    """Import the `sitecustomize` this file hides, as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    me = sys.modules.get(__name__)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.modules.pop(__name__, None)
    try:
        __import__("sitecustomize")
    except ModuleNotFoundError as exc:
        if exc.name != "sitecustomize":
            raise
        if me is not None:
            sys.modules[__name__] = me


_install()
if __name__ == "sitecustomize":
    _chain()
