"""Which build of muxio runs: the compiled modules, or the pure-Python ones.

The compiled build puts an extension module beside each `.py` it compiled
(`setup.py`: every module with a `.pxd`), and the import system prefers the
extension.  `MUXIO_PURE=1` at import turns that preference around for muxio's
own modules, so one installed package can be run both ways: the pure path
is the reference the compiled one is tested against, and the way to tell a
compiler's bug from ours.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from types import ModuleType

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


PURE = _flag("MUXIO_PURE")


class PureFinder:
    """Finds muxio's modules as their `.py` source even where an extension sits beside it."""

    @classmethod
    def find_spec(
        cls, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not name.startswith("muxio.") or not path:
            return None
        leaf = name.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return spec_from_file_location(name, source)
        return None


def compiled_modules() -> list[str]:
    """muxio's modules that run compiled here: none under MUXIO_PURE=1."""
    return [] if PURE else list(extensions_on_disk())


@functools.cache
def extensions_on_disk() -> list[str]:
    """muxio's modules with an extension beside their `.py`, whether or not they run.

    Walked once a process: `import muxio` (`COMPILED`), `--version` and the
    test suite's build check all ask.
    """
    found = []
    for folder, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for file in files:
            for suffix in EXTENSION_SUFFIXES:
                if file.endswith(suffix) and file[: -len(suffix)] + ".py" in files:
                    rel = os.path.relpath(os.path.join(folder, file[: -len(suffix)]), PACKAGE_DIR)
                    found.append("muxio." + rel.replace(os.sep, "."))
                    break
    return sorted(found)


def describe() -> str:
    """`muxio --version`'s words for the build."""
    return "compiled" if compiled_modules() else "pure Python"


if PURE and PureFinder not in sys.meta_path:
    sys.meta_path.insert(0, PureFinder)


def expectation_error() -> str | None:
    """Why this build is not the one `MUXIO_EXPECT_BUILD` (compiled|pure) asks for, or None.

    A compile that fails installs the pure package on purpose; a CI run meant
    to test the compiled build must not pass on the pure one by that accident.
    """
    expected = os.environ.get("MUXIO_EXPECT_BUILD", "").strip().lower()
    if not expected:
        return None
    if expected not in ("compiled", "pure"):
        return f"MUXIO_EXPECT_BUILD must be 'compiled' or 'pure', not {expected!r}"
    actual = "compiled" if compiled_modules() else "pure"
    if actual == expected:
        return None
    return (
        f"MUXIO_EXPECT_BUILD={expected} but the {actual} build of muxio runs from {PACKAGE_DIR}"
        + (" (was it built without a C compiler or Cython?)" if expected == "compiled" else "")
    )
