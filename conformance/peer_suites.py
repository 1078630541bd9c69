"""Run other projects' test suites, unchanged, on asyncio's loop and on muxio's, side by side.

The peers are pinned (`SUITES`): anyio's sdist from PyPI (through pip) and websockets'
release tag from GitHub (its sdist ships no tests).  They are unpacked into a cache
directory with a virtual environment of their own holding their test requirements, so the
project's environment is left alone, and each suite runs twice under pytest with
`peer_plugin.py`, which installs the loop for the whole session and fails the session if
muxio's side made any other loop.  The bar: every test that passes on asyncio's loop passes
on muxio's (`peer_exclusions.py` lists the accepted exceptions, each with its reason).

    python conformance/peer_suites.py                       # both suites, both loops
    python conformance/peer_suites.py --suites anyio --json out.json
    python conformance/peer_suites.py --source websockets=/path/to/websockets.git

Exit status: 0 when nothing differs, 1 when a test passes on asyncio's loop only (or
muxio's side made a foreign loop, or a run died), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOOPS = ("asyncio", "muxio")


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    pypi: bool
    """True: the sdist from PyPI (pip download); False: the GitHub tag's tarball."""
    url: str
    args: tuple[str, ...]
    install_self: bool
    """Install the unpacked tree into the peer venv (anyio's tests need its entry point)."""
    pythonpath: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


SUITES: dict[str, Suite] = {
    "anyio": Suite(
        name="anyio",
        version="4.16.0",
        pypi=True,
        url="",
        # anyio's own addopts (-p anyio, -p timeout, timeout=20, filterwarnings=error) apply;
        # only the asyncio backend: the trio and uvloop parametrizations are deselected.
        args=("tests", "-k", "not trio and not uvloop"),
        install_self=True,
    ),
    "websockets": Suite(
        name="websockets",
        version="17.0.1",
        pypi=False,
        url="https://github.com/python-websockets/websockets/archive/refs/tags/{version}.tar.gz",
        args=("tests/asyncio", "tests/legacy", "-p", "timeout", "--timeout", "120"),
        install_self=False,
        pythonpath=("src",),  # as its Makefile does: the pure-Python build, no C speedups
    ),
}

REQUIREMENTS = (
    "pytest>=9.0",
    "pytest-timeout>=2.4.0",
    # anyio's [dependency-groups] test, less coverage and uvloop (not run here)
    "blockbuster>=1.5.29",
    "hypothesis>=4.18.2",
    "psutil>=5.9",
    "pytest-mock>=3.14",
    "trustme>=1.0.0",
    "truststore>=0.9.1",
    # websockets' tests/requirements.txt and tox deps, less mitmproxy (its proxy tests skip
    # themselves without it) and trio (its own tests, not run here)
    "python-socks[asyncio]",
    "werkzeug",
)


class UsageError(Exception):
    pass


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "muxio-peer-suites"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack into `dest`/<name>-<version>, whatever the archive's top directory is called."""
    if dest.exists():
        return dest
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    with tarfile.open(archive) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(tmp, filter="data")
        else:
            tar.extractall(tmp)
    (top,) = list(tmp.iterdir())
    top.rename(dest)
    tmp.rmdir()
    return dest


def fetch(suite: Suite, cache: Path, source: str | None) -> Path:
    """The peer's unpacked tree in the cache; fetched once per pinned version."""
    tree = cache / f"{suite.name}-{suite.version}"
    if tree.exists():
        return tree
    archive = cache / f"{suite.name}-{suite.version}.tar.gz"
    if source:
        src = Path(source)
        if src.is_dir() and ((src / "HEAD").exists() or (src / ".git").exists()):
            log(f"== {suite.name}: git archive {suite.version} from {src}")
            with open(archive, "wb") as out:
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(src),
                        "archive",
                        "--format=tar.gz",
                        f"--prefix={suite.name}-{suite.version}/",
                        suite.version,
                    ],
                    stdout=out,
                    check=True,
                )
        elif src.is_file():
            shutil.copyfile(src, archive)
        else:
            raise UsageError(f"--source {suite.name}={source}: not a tarball or git directory")
    elif suite.pypi:
        log(f"== {suite.name}: pip download {suite.name}=={suite.version} (sdist)")
        with tempfile.TemporaryDirectory(dir=cache) as d:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"{suite.name}=={suite.version}",
                    "-d",
                    d,
                ],
                check=True,
            )
            (got,) = list(Path(d).iterdir())
            shutil.move(str(got), archive)
    else:
        url = suite.url.format(version=suite.version)
        log(f"== {suite.name}: {url}")
        with urllib.request.urlopen(url, timeout=120) as resp, open(archive, "wb") as out:
            shutil.copyfileobj(resp, out)
    return _unpack(archive, tree)


def venv(cache: Path, trees: dict[str, Path], selected: list[Suite]) -> Path:
    """A virtual environment for the peers' test requirements, built once per set of pins."""
    tag = "-".join(f"{s.name}{s.version}" for s in selected)
    env_dir = cache / f"venv-py{sys.version_info[0]}.{sys.version_info[1]}-{tag}"
    python = env_dir / "bin" / "python"
    if (env_dir / ".complete").exists():
        return python
    if env_dir.exists():
        shutil.rmtree(env_dir)
    log(f"== peer venv {env_dir}")
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    selves = [str(trees[s.name]) for s in selected if s.install_self]
    subprocess.run([*pip, *REQUIREMENTS, *selves], check=True)
    (env_dir / ".complete").write_text("ok\n")
    return python


def run_one(
    suite: Suite, loop: str, tree: Path, python: Path, out_dir: Path, exclude: list[str]
) -> dict[str, Any]:
    report = out_dir / f"{suite.name}-{loop}.json"
    logfile = out_dir / f"{suite.name}-{loop}.log"
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    paths = [str(tree / p) for p in suite.pythonpath] + [str(HERE), str(REPO / "src")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["MUXIO_PEER_LOOP"] = loop
    env["MUXIO_PEER_REPORT"] = str(report)
    env["MUXIO_PEER_EXCLUDE"] = json.dumps(exclude if loop == "muxio" else [])
    env.update(suite.env)
    cmd = [
        str(python),
        "-m",
        "pytest",
        "-p",
        "peer_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "--no-header",
        *suite.args,
    ]
    if loop == "muxio":
        cmd[3:3] = ["-p", "muxio.pytest_plugin"]
    log(f"== {suite.name} on {loop}: {' '.join(cmd[1:])}  (log: {logfile})")
    t0 = time.monotonic()
    with open(logfile, "w") as lf:
        rc = subprocess.run(cmd, cwd=tree, env=env, stdout=lf, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - t0
    data: dict[str, Any] = {"tests": {}, "loops_made": {}, "foreign_loops": {}, "problems": []}
    if report.exists():
        data = json.loads(report.read_text())
    else:
        data["problems"] = [f"pytest exited {rc} without a report (see {logfile})"]
    data["returncode"] = rc
    data["seconds"] = round(seconds, 1)
    log(f"== {suite.name} on {loop}: done in {seconds:.0f} s (exit {rc})")
    return data


def counts(tests: dict[str, dict[str, str]]) -> dict[str, int]:
    c = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for t in tests.values():
        c[t["outcome"]] = c.get(t["outcome"], 0) + 1
    return c


def excluded_ids(suite: str, ids: list[str], exclusions: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tid in ids:
        for pattern, reason in exclusions.items():
            if fnmatch.fnmatchcase(f"{suite}::{tid}", pattern):
                out[tid] = reason
                break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default=",".join(SUITES), help="comma-separated: anyio,websockets")
    ap.add_argument("--cache", type=Path, default=default_cache())
    ap.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SUITE=PATH",
        help="a local tarball or git directory instead of downloading",
    )
    ap.add_argument("--jobs", type=int, default=2, help="pytest runs at once (default 2)")
    ap.add_argument("--json", type=Path, help="write counts, differences and timings here")
    ap.add_argument("--no-exclusions", action="store_true")
    args = ap.parse_args(argv)
    try:
        names = [n for n in args.suites.split(",") if n]
        unknown = [n for n in names if n not in SUITES]
        if unknown or not names:
            raise UsageError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
        sources = dict(s.split("=", 1) for s in args.source if "=" in s)
        if len(sources) != len(args.source) or set(sources) - set(names):
            raise UsageError("--source takes SUITE=PATH for a selected suite")
        exclusions: dict[str, str] = {}
        if not args.no_exclusions:
            sys.path.insert(0, str(HERE))
            from peer_exclusions import EXCLUSIONS

            exclusions = dict(EXCLUSIONS)
            empty = [k for k, v in exclusions.items() if not v.strip()]
            if empty:
                raise UsageError(f"peer exclusions without a reason: {empty}")
        selected = [SUITES[n] for n in names]
        args.cache.mkdir(parents=True, exist_ok=True)
        trees = {s.name: fetch(s, args.cache, sources.get(s.name)) for s in selected}
    except UsageError as exc:
        print(f"peer_suites: {exc}", file=sys.stderr)
        return 2
    python = venv(args.cache, trees, selected)
    out_dir = Path(tempfile.mkdtemp(prefix="peer-suites-"))
    t0 = time.monotonic()
    jobs = [(s, loop) for s in selected for loop in LOOPS]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            (s.name, loop): pool.submit(
                run_one,
                s,
                loop,
                trees[s.name],
                python,
                out_dir,
                [p.split("::", 1)[1] for p in exclusions if p.startswith(f"{s.name}::")],
            )
            for s, loop in jobs
        }
        results = {k: f.result() for k, f in futures.items()}
    wall = time.monotonic() - t0

    summary: dict[str, Any] = {
        "python": sys.version.split()[0],
        "wall_seconds": round(wall, 1),
        "suites": {},
    }
    failed = False
    for s in selected:
        ref, mine = results[(s.name, "asyncio")], results[(s.name, "muxio")]
        excl = excluded_ids(s.name, list(ref["tests"]), exclusions)
        diffs = {
            tid: {"muxio": mine["tests"].get(tid, {"outcome": "missing", "detail": "not run"})}
            for tid, rec in ref["tests"].items()
            if rec["outcome"] == "passed"
            and tid not in excl
            and mine["tests"].get(tid, {}).get("outcome") != "passed"
        }
        problems = ref["problems"] + mine["problems"]
        failed = failed or bool(diffs) or bool(problems)
        summary["suites"][s.name] = {
            "version": s.version,
            "counts": {"asyncio": counts(ref["tests"]), "muxio": counts(mine["tests"])},
            "seconds": {"asyncio": ref["seconds"], "muxio": mine["seconds"]},
            "loops_made": {"asyncio": ref["loops_made"], "muxio": mine["loops_made"]},
            "foreign_loops_on_muxio": mine["foreign_loops"],
            "problems": problems,
            "excluded": excl,
            "differences": {
                t: f"{d['muxio']['outcome']}: {d['muxio']['detail']}"
                for t, d in sorted(diffs.items())
            },
        }
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"\nJSON: {args.json}")
    print(f"logs: {out_dir}")
    return 1 if failed else 0


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\npeer suites on Python {summary['python']}, wall {summary['wall_seconds']:.0f} s\n")
    head = f"{'suite':<18}{'loop':<9}{'pass':>6}{'fail':>6}{'err':>6}{'skip':>6}{'secs':>7}"
    print(head)
    for name, s in summary["suites"].items():
        for loop in LOOPS:
            c = s["counts"][loop]
            print(
                f"{name + ' ' + s['version']:<18}{loop:<9}{c['passed']:>6}{c['failed']:>6}"
                f"{c['error']:>6}{c['skipped']:>6}{s['seconds'][loop]:>7.0f}"
            )
        print(
            f"{'':<18}{'excluded':<9}{len(s['excluded']):>6}   differences: "
            f"{len(s['differences'])}   loops made on muxio's side: {s['loops_made']['muxio']}"
        )
    for name, s in summary["suites"].items():
        for problem in s["problems"]:
            print(f"\n{name}: PROBLEM: {problem}")
        for tid, nodes in list(s["foreign_loops_on_muxio"].items())[:20]:
            print(f"  foreign loop in {tid}: {', '.join(sorted(set(nodes)))}")
        if s["excluded"]:
            print(f"\n{name}: excluded")
            for tid, reason in s["excluded"].items():
                print(f"  {tid}: {reason}")
        if s["differences"]:
            print(f"\n{name}: pass on asyncio's loop, not on muxio's ({len(s['differences'])})")
            for tid, what in s["differences"].items():
                print(f"  {tid}  -- {what[:200]}")


if __name__ == "__main__":
    sys.exit(main())
