"""`muxio run`: any program on muxio's loop, its Python children too, with python's exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line

import muxio
from muxio.launch import SITE_DIR, child_environment

pytestmark = pytest.mark.timeout(60)

SRC = str(Path(muxio.__file__).resolve().parents[1])

PROGRAM = """\
import asyncio, multiprocessing, subprocess, sys


async def current():
    return type(asyncio.get_running_loop()).__module__


def kind():
    return asyncio.run(current())


def in_child(queue):
    queue.put(kind())


if __name__ == "__main__":
    print("argv", sys.argv[1:])
    print("main", kind())
    if hasattr(asyncio, "Runner"):
        with asyncio.Runner() as runner:
            print("runner", runner.run(current()))
    else:
        print("runner", "muxio.loop (no asyncio.Runner before 3.11)")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=in_child, args=(queue,))
    p.start()
    print("spawn", queue.get(timeout=30))
    p.join(30)
    code = "import asyncio; print(type(asyncio.new_event_loop()).__module__)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    print("subprocess", child.stdout.strip() or child.stderr)
    sys.exit(int(sys.argv[1]))
"""


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MUXIO_")}
    base["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [extra.pop("path", "")])])
    return dict(base, **extra)


def muxio_run(
    *args: str, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muxio", "run", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env(**extra),
    )


def report(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def test_a_script_its_spawned_and_subprocess_children_all_run_on_muxio(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    out = muxio_run(str(script), "7", "--flag")
    assert out.returncode == 7, out.stderr
    lines = report(out)
    assert lines["argv"] == "['7', '--flag']"
    assert lines["main"] == "muxio.loop"
    assert lines["runner"].startswith("muxio.loop")
    assert lines["spawn"] == "muxio.loop"
    assert lines["subprocess"] == "muxio.loop"


def test_without_muxio_run_the_same_program_is_on_asyncio(tmp_path: Path) -> None:
    """The control: the program itself does not pick muxio."""
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    out = subprocess.run(
        [sys.executable, str(script), "0"], capture_output=True, text=True, timeout=60, env=env()
    )
    assert out.returncode == 0, out.stderr
    assert not any(v.startswith("muxio") for v in report(out).values()), out.stdout


MODULE = """\
import asyncio, subprocess, sys

async def current():
    return type(asyncio.get_running_loop()).__module__

print("argv", sys.argv[1:])
print("main", asyncio.run(current()))
code = "import asyncio; print(type(asyncio.new_event_loop()).__module__)"
print("subprocess", subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True).stdout.strip())
"""


@pytest.mark.parametrize("how", ["python -m muxio", "muxio"])
def test_a_module_runs_as_python_dash_m_would(tmp_path: Path, how: str) -> None:
    """From the current directory, as `python -m`: also with the `muxio` script elsewhere."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text(MODULE)
    command = [sys.executable, "-m", "muxio"]
    if how == "muxio":  # the installed script: its own folder, not the cwd, is sys.path[0]
        script = Path(sys.executable).with_name("muxio")
        if not script.is_file():
            pytest.skip(f"no muxio script beside {sys.executable}")
        command = [str(script)]
    out = subprocess.run(
        [*command, "run", "-m", "pkg", "a", "-b"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env(),
    )
    assert out.returncode == 0, out.stderr
    lines = report(out)
    assert lines["argv"] == "['a', '-b']"
    assert lines["main"] == lines["subprocess"] == "muxio.loop"


def test_system_exit_with_a_message_is_pythons(tmp_path: Path) -> None:
    script = tmp_path / "bye.py"
    script.write_text("raise SystemExit('bye now')\n")
    out = muxio_run(str(script))
    assert (out.returncode, out.stderr) == (1, "bye now\n")


def test_an_exception_in_the_program_is_its_traceback(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("raise ValueError('boom')\n")
    out = muxio_run(str(script))
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ValueError: boom" in out.stderr


def test_a_sitecustomize_already_on_the_path_still_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITE'] = 'ran'\n")
    script = tmp_path / "prog.py"
    script.write_text(
        "import asyncio, os, subprocess, sys\n"
        "code = 'import asyncio, os; print(os.environ.get(\"OTHER_SITE\"), "
        "type(asyncio.new_event_loop()).__module__)'\n"
        "print(subprocess.run([sys.executable, '-c', code], capture_output=True, "
        "text=True).stdout.strip())\n"
    )
    out = muxio_run(str(script), path=str(site))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ran muxio.loop"


def test_child_environment_puts_the_hook_first_once() -> None:
    environ = {"PYTHONPATH": os.pathsep.join(["/a", SITE_DIR, "/b"])}
    child_environment(environ)
    child_environment(environ)
    assert environ == {
        "MUXIO_RUN": "1", "PYTHONPATH": os.pathsep.join([SITE_DIR, "/a", "/b"]),
        "UVICORN_LOOP": "none",  # uvicorn's command line then asks the policy
    }
    assert os.path.isfile(os.path.join(SITE_DIR, "sitecustomize.py"))


def test_child_environment_leaves_a_uvicorn_loop_already_chosen() -> None:
    environ = {"UVICORN_LOOP": "asyncio"}
    child_environment(environ)
    assert environ["UVICORN_LOOP"] == "asyncio"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "muxio: run needs a program: muxio run -m module [args] or muxio run script.py"),
        (["-m"], "muxio: run -m needs a module name, as python -m takes it"),
        (["nosuch.py"], "muxio: run nosuch.py: no such file (check the path)"),
        (
            ["-x", "prog.py"],
            "muxio: run: unknown option '-x' (only -m module; put the program's own "
            "options after the module or script)",
        ),
        (
            ["-m", "muxio_no_such_module"],
            f"muxio: run -m muxio_no_such_module: no module named 'muxio_no_such_module' in "
            f"this Python ({sys.executable}); check the name or install it",
        ),
        (
            ["-m", "muxio.services"],
            "muxio: run -m muxio.services: 'muxio.services' is a package with no __main__ "
            "module; name the module inside it that runs the program",
        ),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = muxio_run(*args)
    assert out.returncode == 2
    assert one_line(out.stderr.encode()) == message


def test_a_bad_loop_variable_stops_it_before_the_program_starts(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text("print('started')\n")
    out = muxio_run(str(script), MUXIO_POLLER="kqeue")
    assert out.returncode == 2 and out.stdout == ""
    assert one_line(out.stderr.encode()).startswith("muxio: MUXIO_POLLER='kqeue': not a poller")


def test_help_says_how_to_use_it() -> None:
    out = muxio_run("--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: muxio run [-m module | script.py] [args ...]")
