"""The optional compiled build: every `src/muxio/**/X.py` with an `X.pxd` beside it.

The `.py` stays the source of truth (Cython's pure-Python mode: the `.pxd` only
adds C types), so the pure package is the same code, importable anywhere.  A
machine without a C compiler, or `MUXIO_PURE=1` at install, gets that pure
package instead of an error; `MUXIO_COMPILE=1` makes a failed compile fatal,
for CI and wheel builds that must not ship pure by accident.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


PURE = _flag("MUXIO_PURE")
STRICT = _flag("MUXIO_COMPILE")


def _warn(message: str) -> None:
    print(f"muxio: {message}", file=sys.stderr)


def compiled_sources() -> list[Path]:
    """The modules that have a `.pxd`: what the compiled build compiles, relative to SRC."""
    return sorted(
        pxd.with_suffix(".py").relative_to(SRC)
        for pxd in (SRC / "muxio").rglob("*.pxd")
        if pxd.with_suffix(".py").is_file()
    )


def _extensions() -> list[Extension]:
    if PURE:
        _warn("MUXIO_PURE=1: installing the pure-Python package")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if STRICT:
            raise
        _warn("Cython is not installed: installing the pure-Python package")
        return []
    modules = [
        Extension(".".join(path.with_suffix("").parts), [str(Path("src") / path)])
        for path in compiled_sources()
    ]
    return list(
        cythonize(
            modules,
            build_dir=str(Path("build") / "cython"),
            compiler_directives={"language_level": "3", "binding": True},
            quiet=True,
        )
    )


class OptionalBuildExt(build_ext):
    """A compile that fails leaves the pure modules in place, unless MUXIO_COMPILE=1."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._give_up(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        if STRICT:
            raise exc
        _warn(f"compiling failed ({exc}); installing the pure-Python package")


if __name__ == "__main__":
    os.chdir(HERE)
    setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
