"""The two builds: compiled modules where a `.pxd` asks for them, pure Python otherwise.

The fast tests run on every build: which one runs is reported truthfully and
`MUXIO_PURE=1` at import always gives the pure modules.  The install tests
build real wheels with pip (a minute, and the registry for the isolated build
environment), so they run when `MUXIO_BUILD_TESTS=1` asks (CI sets it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from helpers import MUXIO_PATH

import muxio
from muxio import _build

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
HAS_CYTHON = importlib.util.find_spec("Cython") is not None
install_tests = pytest.mark.skipif(
    os.environ.get("MUXIO_BUILD_TESTS") != "1",
    reason="builds real wheels with pip (slow): set MUXIO_BUILD_TESTS=1",
)


def _python(code: str, *, path: str = MUXIO_PATH, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MUXIO_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60,
        env={**environ, "PYTHONPATH": path, **env},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("muxio_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOADED = (
    "import sys, muxio, muxio.cli, muxio.server, muxio.pollers.epoll\n"
    "mods = [m for n, m in sys.modules.items() if n.startswith('muxio')]\n"
    "print(muxio.COMPILED, sorted({m.__file__.rsplit('.', 1)[-1] for m in mods}))\n"
)


def test_version_says_which_build_runs_and_on_which_python() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "muxio", "--version"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    build = "compiled" if muxio.COMPILED else "pure Python"
    version = ".".join(map(str, sys.version_info[:3]))
    line = out.stdout.strip()
    assert re.fullmatch(rf"muxio {muxio.__version__} \({build}\), CPython {version}", line)


def test_compiled_is_true_exactly_when_compiled_modules_run() -> None:
    modules = _build.compiled_modules()
    assert muxio.COMPILED is bool(modules)
    for name in modules:
        module = importlib.import_module(name)
        assert module.__file__ is not None and not module.__file__.endswith(".py")


def test_pure_at_import_loads_every_module_from_its_source() -> None:
    assert _python(LOADED, MUXIO_PURE="1") == "False ['py']"


def test_pure_accepts_the_usual_spellings_of_true() -> None:
    for value in ("true", "yes", "ON"):
        assert _python("import muxio; print(muxio.COMPILED)", MUXIO_PURE=value) == "False"


def test_expect_build_names_what_runs_instead() -> None:
    on_disk = bool(_build.extensions_on_disk())  # the child runs without MUXIO_PURE
    actual = "compiled" if on_disk else "pure"
    other = "pure" if on_disk else "compiled"
    code = "from muxio import _build; print(_build.expectation_error())"
    assert _python(code, MUXIO_EXPECT_BUILD=actual) == "None"
    assert f"the {actual} build of muxio runs" in _python(code, MUXIO_EXPECT_BUILD=other)
    assert "must be 'compiled' or 'pure'" in _python(code, MUXIO_EXPECT_BUILD="fast")


def test_pytest_stops_at_once_on_the_wrong_build(tmp_path: Path) -> None:
    other = "pure" if muxio.COMPILED else "compiled"
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path)
    shutil.copy(ROOT / "tests" / "helpers.py", tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": MUXIO_PATH, "MUXIO_EXPECT_BUILD": other},
    )
    assert out.returncode == 1
    assert f"MUXIO_EXPECT_BUILD={other}" in out.stdout + out.stderr
    assert "1 passed" not in out.stdout


def test_setup_compiles_exactly_the_modules_that_have_a_pxd() -> None:
    sources = _setup_module().compiled_sources()
    pxds = sorted((ROOT / "src").rglob("*.pxd"))
    assert sources, "no module is compiled at all"
    assert [str(p) for p in sources] == [
        str(p.relative_to(ROOT / "src").with_suffix(".py")) for p in pxds
    ]
    assert all((ROOT / "src" / p).is_file() for p in sources)


@pytest.mark.skipif(not (COMPILER and HAS_CYTHON), reason="needs a C compiler and Cython")
def test_an_extension_beside_its_source_runs_unless_pure_is_asked_for(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "muxio", tmp_path / "muxio")
    target = tmp_path / "muxio" / "pollers" / "epoll.py"
    build = subprocess.run(
        [sys.executable, "-m", "cython", "-3", str(target)],
        capture_output=True, text=True, timeout=120,
    )
    if build.returncode != 0:
        pytest.fail(build.stderr)
    subprocess.run(
        [sys.executable, "-c", _CC.format(c=str(target.with_suffix(".c")))],
        check=True, timeout=300, cwd=tmp_path,
    )
    where = (
        "import muxio, muxio.pollers.epoll as e; print(muxio.COMPILED, e.__file__.endswith('.py'))"
    )
    assert _python(where, path=str(tmp_path)) == "True False"
    assert _python(where, path=str(tmp_path), MUXIO_PURE="1") == "False True"


_CC = (
    "import sysconfig, subprocess, sys\n"
    "c = {c!r}\n"
    "so = c[:-2] + sysconfig.get_config_var('EXT_SUFFIX')\n"
    "cc = sysconfig.get_config_var('CC').split()\n"
    "flags = ['-shared', '-fPIC', '-O1', '-I' + sysconfig.get_paths()['include']]\n"
    "sys.exit(subprocess.call([*cc, *flags, c, '-o', so]))\n"
)


def _wheel(tmp_path: Path, source: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MUXIO_")}
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"),
         str(source)],
        capture_output=True, text=True, timeout=600, env={**environ, **env},
    )


def _clean_copy(tmp_path: Path) -> Path:
    """The repository without build leftovers, since setuptools reuses a stale build/."""
    copy = tmp_path / "src-tree"
    shutil.copytree(
        ROOT, copy,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                      "*.so", "*.c", ".*_cache", "compare-out"),
    )
    return copy


def _wheel_names(tmp_path: Path) -> dict[str, list[str]]:
    return {
        w.name: zipfile.ZipFile(w).namelist() for w in sorted((tmp_path / "out").glob("*.whl"))
    }


@install_tests
def test_pure_install_is_a_universal_wheel_with_no_extension(tmp_path: Path) -> None:
    out = _wheel(tmp_path, _clean_copy(tmp_path), MUXIO_PURE="1")
    assert out.returncode == 0, out.stderr
    ((name, files),) = _wheel_names(tmp_path).items()
    assert name.endswith("-py3-none-any.whl")
    assert "muxio/pollers/epoll.py" in files
    assert not [f for f in files if f.endswith((".so", ".pyd", ".c"))]


@install_tests
@pytest.mark.skipif(COMPILER is None, reason="needs a C compiler")
def test_default_install_compiles_every_module_with_a_pxd(tmp_path: Path) -> None:
    out = _wheel(tmp_path, _clean_copy(tmp_path), MUXIO_COMPILE="1")
    assert out.returncode == 0, out.stderr
    ((name, files),) = _wheel_names(tmp_path).items()
    assert "-cp3" in name and "none-any" not in name
    compiled = {f.split(".")[0] for f in files if f.endswith(".so")}
    expected = {str(p.with_suffix("")) for p in _setup_module().compiled_sources()}
    assert compiled == expected
    assert {f"{m}.py" for m in expected} <= set(files)  # the pure modules ship too


@install_tests
def test_no_compiler_installs_pure_but_strict_mode_fails(tmp_path: Path) -> None:
    tree = _clean_copy(tmp_path)
    out = _wheel(tmp_path, tree, CC="/bin/false")
    assert out.returncode == 0, out.stderr
    ((_name, files),) = _wheel_names(tmp_path).items()
    assert not [f for f in files if f.endswith(".so")]
    assert "muxio/pollers/epoll.py" in files
    shutil.rmtree(tmp_path / "out")
    shutil.rmtree(tree / "build", ignore_errors=True)
    strict = _wheel(tmp_path, tree, CC="/bin/false", MUXIO_COMPILE="1")
    assert strict.returncode != 0


@install_tests
def test_the_sdist_builds_both_ways(tmp_path: Path) -> None:
    tree = _clean_copy(tmp_path)
    sdist = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path / "sdist"), str(tree)],
        capture_output=True, text=True, timeout=600,
    )
    if sdist.returncode != 0 and "No module named build" in sdist.stderr:
        pytest.skip("the 'build' package is not installed (the test extra has it)")
    assert sdist.returncode == 0, sdist.stderr
    (archive,) = (tmp_path / "sdist").glob("*.tar.gz")
    pure = _wheel(tmp_path, archive, MUXIO_PURE="1")
    assert pure.returncode == 0, pure.stderr
    if COMPILER is not None:
        compiled = _wheel(tmp_path, archive, MUXIO_COMPILE="1")
        assert compiled.returncode == 0, compiled.stderr
    names = list(_wheel_names(tmp_path))
    assert any(n.endswith("py3-none-any.whl") for n in names)
    assert COMPILER is None or any("none-any" not in n for n in names)
