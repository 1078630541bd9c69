"""Run CPython's own asyncio test suite against an event loop, next to a reference loop.

The suite installed with the interpreter (``test.test_asyncio``) is the
conformance bar for a drop-in loop. Two kinds of test classes are run:

* per-loop mixin classes (``EventLoopTestsMixin`` and friends): CPython makes
  one concrete class per selector whose ``create_event_loop``/``new_loop``
  returns ``asyncio.SelectorEventLoop(...)``; those classes are replaced by one
  class per mixin combination (``<Representative>OnLoop``) whose hook returns
  the chosen loop;
* everything else, with the chosen loop's policy installed, so that
  ``asyncio.run``, ``IsolatedAsyncioTestCase`` and ``asyncio.new_event_loop``
  hand out the chosen loop.

Every test records whether it created a loop of the chosen kind; tests that
never did (``test_utils.TestLoop``, explicit ``SelectorEventLoop()``, pure
helpers) are counted as "not loop-specific". Each module runs in its own
subprocess with per-test and per-unit timeouts; the same selection runs on the
``--against`` loop and the report lists what passes there but not here.

Usage: python conformance/asyncio_suite.py --loop muxio --against asyncio
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import fnmatch
import importlib
import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

PREFIX = "test.test_asyncio."

# Modules whose tests are about asyncio's own private machinery, not the loop API.
SKIPPED_MODULES: dict[str, str] = {
    "test_base_events": "tests BaseEventLoop internals through mocks (_run_once, _selector, ...)",
    "test_selector_events": "tests asyncio's selector transports, BaseSelectorEventLoop internals",
    "test_proactor_events": "tests asyncio's Windows proactor transports with mocks",
    "test_windows_events": "Windows-only: ProactorEventLoop and IOCP internals",
    "test_windows_utils": "Windows-only: asyncio.windows_utils helpers",
}

# Longest first, so that with --jobs N the slow modules start early.
KNOWN_MODULES: tuple[str, ...] = (
    "test_tasks",
    "test_subprocess",
    "test_events",
    "test_ssl",
    "test_taskgroups",
    "test_sslproto",
    "test_futures",
    "test_sendfile",
    "test_sock_lowlevel",
    "test_streams",
    "test_locks",
    "test_unix_events",
    "test_queues",
    "test_server",
    "test_timeouts",
    "test_waitfor",
    "test_runners",
    "test_eager_task_factory",
    "test_buffered_proto",
    "test_pep492",
    "test_futures2",
    "test_threads",
    "test_staggered",
    "test_context",
    "test_protocols",
    "test_transports",
)

# Small modules share one subprocess: start-up costs more than their tests.
HEAVY_MODULES = frozenset(KNOWN_MODULES[:6])

HOOKS = ("create_event_loop", "new_loop")
PINNED_LOOP = re.compile(r"\b(?:SelectorEventLoop|ProactorEventLoop|_UnixSelectorEventLoop)\s*\(")
OK = frozenset({"pass", "xfail"})
OUTCOMES = ("pass", "fail", "error", "skip", "xfail", "xpass", "hung", "missing", "excluded")


class UsageError(Exception):
    """A bad command line: reported as one line and exit status 2."""


# --------------------------------------------------------------------------- loops


@dataclass
class LoopSpec:
    """How to make the loop: a factory for mixin hooks and a policy for everything else."""

    name: str
    factory: Callable[[], asyncio.AbstractEventLoop]
    policy_base: type[asyncio.AbstractEventLoopPolicy]
    policy_makes_loop: bool


def _stock_asyncio_loop() -> asyncio.AbstractEventLoop:
    return asyncio.DefaultEventLoopPolicy().new_event_loop()


def resolve_loop(name: str) -> LoopSpec:
    """Map a loop name to its factory; unknown or unavailable loops are usage errors."""
    if name == "asyncio":
        return LoopSpec(name, _stock_asyncio_loop, asyncio.DefaultEventLoopPolicy, True)
    if name == "uvloop":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError as exc:
            raise UsageError(f"loop 'uvloop' is not available ({exc}); pip install uvloop") from exc
        return LoopSpec(name, uvloop.new_event_loop, uvloop.EventLoopPolicy, True)
    if name == "muxio":
        try:
            muxio = importlib.import_module("muxio")
        except Exception as exc:
            raise UsageError(
                f"loop 'muxio' is not importable ({exc}); set PYTHONPATH=src or install muxio"
            ) from exc
        factory = getattr(muxio, "new_event_loop", None)
        if factory is None:
            raise UsageError(
                f"this muxio ({muxio.__file__}) has no new_event_loop(); use a build with the "
                "asyncio-compatible loop"
            )
        policy = getattr(muxio, "EventLoopPolicy", None)
        if isinstance(policy, type) and issubclass(policy, asyncio.AbstractEventLoopPolicy):
            return LoopSpec(name, factory, policy, True)
        return LoopSpec(name, factory, asyncio.DefaultEventLoopPolicy, False)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise UsageError(f"loop {name!r} cannot be imported: {exc!r}") from exc
        if isinstance(obj, type) and issubclass(obj, asyncio.AbstractEventLoopPolicy):
            policy_cls: type[asyncio.AbstractEventLoopPolicy] = obj
            return LoopSpec(name, lambda: policy_cls().new_event_loop(), policy_cls, True)
        if not callable(obj):
            raise UsageError(f"loop {name!r} is not callable; give a loop factory or policy class")
        return LoopSpec(name, obj, asyncio.DefaultEventLoopPolicy, False)
    raise UsageError(
        f"unknown loop {name!r}; use asyncio, uvloop, muxio or module:callable (a loop factory)"
    )


class LoopBroken(Exception):
    """The loop cannot even be created: a runtime failure (exit 1), not a usage error."""


def check_loop(spec: LoopSpec) -> None:
    """Create and close one loop up front, so a broken build fails once, not per module."""
    try:
        loop = spec.factory()
        loop.close()
    except Exception as exc:
        raise LoopBroken(f"loop {spec.name!r} cannot be created: {exc!r}") from exc


# --------------------------------------------------------------------------- child side

_created = 0


def _count(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    global _created
    _created += 1
    return loop


def install_policy(spec: LoopSpec) -> Callable[[], asyncio.AbstractEventLoop]:
    """Make the chosen loop the default, even after a test resets the policy to None."""
    base: Any = spec.policy_base
    factory = spec.factory
    makes_loop = spec.policy_makes_loop

    class CountingPolicy(base):  # type: ignore[misc]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            loop = super().new_event_loop() if makes_loop else factory()
            return _count(loop)

    events: Any = asyncio.events

    def init_policy() -> None:
        if events._event_loop_policy is None:
            events._event_loop_policy = CountingPolicy()

    events._init_event_loop_policy = init_policy
    asyncio.set_event_loop_policy(CountingPolicy())
    return lambda: _count(factory())


class _WithDefaultExecutor:
    """Shows a loop to test_utils.TestCase.close_loop as if it had no default executor."""

    _default_executor = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def install_default_executor_shim() -> None:
    """Let loops without the private ``_default_executor`` get through the suite's cleanup.

    ``test_utils.TestCase.close_loop`` reads ``loop._default_executor``; a loop
    without it errors in every test's cleanup, which hides the test's real outcome.
    The shim shuts the default executor down through the public API instead.
    """
    test_utils: Any = importlib.import_module(PREFIX + "utils")
    original = test_utils.TestCase.close_loop

    def close_loop(loop: Any) -> None:
        if not hasattr(loop, "_default_executor"):
            if not loop.is_closed():
                loop.run_until_complete(loop.shutdown_default_executor())
            loop = _WithDefaultExecutor(loop)
        original(loop)

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def _pinned_hook(cls: type) -> str | None:
    """The loop hook of a per-selector class (one that builds asyncio's own loop), if any."""
    for hook in HOOKS:
        fn = cls.__dict__.get(hook)
        if fn is None:
            continue
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            src = cls.__name__
        if PINNED_LOOP.search(src) or re.search(r"Select|Poll|Kqueue|Proactor", src):
            return hook
    return None


@dataclass
class ModulePlan:
    """The classes to run for one module, and what was replaced by what."""

    classes: list[type[unittest.TestCase]] = field(default_factory=list)
    replaced: dict[str, list[str]] = field(default_factory=dict)


def plan_module(module: Any, make_loop: Callable[[], asyncio.AbstractEventLoop]) -> ModulePlan:
    """Keep policy-driven classes; collapse per-selector classes into one retargeted class."""
    plan = ModulePlan()
    groups: dict[tuple[type, ...], list[tuple[type[unittest.TestCase], str]]] = {}
    for obj in list(vars(module).values()):
        if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
            continue
        if obj.__module__ != module.__name__:
            continue
        hook = _pinned_hook(obj)
        if hook is None:
            plan.classes.append(obj)
            continue
        if "Proactor" in obj.__name__ or getattr(obj, "__unittest_skip__", False):
            plan.replaced.setdefault("(dropped: Windows/skipped)", []).append(obj.__name__)
            continue
        groups.setdefault(obj.__bases__, []).append((obj, hook))
    for members in groups.values():
        members.sort(key=lambda m: (not m[0].__name__.startswith("Select"), m[0].__name__))
        rep, hook = members[0]
        name = f"{rep.__name__}OnLoop"

        def hook_impl(self: unittest.TestCase) -> asyncio.AbstractEventLoop:
            return make_loop()

        retargeted = type(
            name, (rep,), {hook: hook_impl, "__module__": module.__name__, "__qualname__": name}
        )
        plan.classes.append(retargeted)
        plan.replaced[name] = [m[0].__name__ for m in members]
    return plan


def _short(test_id: str) -> str:
    """Drop the package prefix; name fixture errors ``module.Class.setUpClass`` and the like."""
    fixture = re.fullmatch(r"(\w+) \((.+)\)", test_id)
    if fixture is not None:
        return f"{_short(fixture.group(2))}.{fixture.group(1)}"
    return test_id[len(PREFIX) :] if test_id.startswith(PREFIX) else test_id


def _summary(err: Any, where: bool = True) -> str:
    """First line of the exception, and for errors the innermost frame that raised it."""
    if not (isinstance(err, tuple) and len(err) == 3 and err[1] is not None):
        return str(err)[:300]
    only = "".join(traceback.format_exception_only(err[0], err[1])).strip()
    text = only.splitlines()[0] if only else err[0].__name__
    frames = traceback.extract_tb(err[2]) if where else []
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} {last.name})"
    return text[:300]


class RecordingResult(unittest.TestResult):
    """Writes one JSON line per test, so a killed child still leaves its results behind."""

    def __init__(self, out: TextIO, test_timeout: float, log: TextIO) -> None:
        super().__init__()
        self._out = out
        self._timeout = test_timeout
        self._log = log
        self._outcome: dict[str, tuple[str, str]] = {}
        self._started: dict[str, tuple[float, int]] = {}

    def _emit(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def _set(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        tid = _short(test.id())
        first, first_detail = self._outcome.get(tid, ("pass", ""))
        if first in ("fail", "error"):
            # The first problem is the cause; later ones (cleanup) are usually its echo.
            if outcome in ("fail", "error") and "(+ later" not in first_detail:
                self._outcome[tid] = (first, f"{first_detail} (+ later {outcome}: {detail})")
            return
        self._outcome[tid] = (outcome, detail)
        if tid not in self._started:
            self._emit({"id": tid, "outcome": outcome, "detail": detail, "loop_used": False})

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        tid = _short(test.id())
        self._started[tid] = (time.monotonic(), _created)
        self._emit({"event": "start", "id": tid})
        self._log.write(f"--- {tid}\n")
        self._log.flush()
        faulthandler.dump_traceback_later(self._timeout, exit=True, file=self._log)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        tid = _short(test.id())
        t0, created0 = self._started.pop(tid, (time.monotonic(), _created))
        outcome, detail = self._outcome.pop(tid, ("pass", ""))
        self._emit(
            {
                "id": tid,
                "outcome": outcome,
                "detail": detail,
                "loop_used": _created > created0,
                "seconds": round(time.monotonic() - t0, 3),
            }
        )

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._set(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._set(test, "fail", _summary(err, where=False))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        self._set(test, "error", _summary(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._set(test, "skip", reason[:300])

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._set(test, "xfail", _summary(err, where=False))

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._set(test, "xpass", "unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            summary = _summary(err, where=not failed)
            self._set(test, "fail" if failed else "error", f"{subtest.id()}: {summary}")


def _iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def limit_memory(megabytes: int) -> None:
    """Cap the child's heap: a loop spinning on a mocked socket can eat gigabytes in seconds."""
    try:
        import resource
    except ImportError:
        return
    limit = megabytes * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def child_main(args: argparse.Namespace) -> int:
    """Run the given modules in this process and stream per-test records to --out."""
    limit_memory(args.memory_limit_mb)
    faulthandler.enable(file=sys.stderr)
    spec = resolve_loop(args.loop)
    make_loop = install_policy(spec)
    if args.shim_default_executor:
        install_default_executor_shim()
    skip: dict[str, list[str]] = (
        json.loads(Path(args.skip_file).read_text()) if args.skip_file else {}
    )
    skip_ids = set(skip.get("ids", []))
    patterns = dict.fromkeys(skip.get("patterns", []), "excluded")
    with open(args.out, "a", encoding="utf-8") as out, open(args.log, "a") as log:
        result = RecordingResult(out, args.test_timeout, log)
        for name in args.modules.split(","):
            asyncio.set_event_loop_policy(None)
            try:
                module = importlib.import_module(PREFIX + name)
            except unittest.SkipTest as exc:
                out.write(json.dumps({"event": "module_skip", "module": name, "reason": str(exc)}))
                out.write("\n")
                continue
            plan = plan_module(module, make_loop)
            out.write(json.dumps({"event": "plan", "module": name, "replaced": plan.replaced}))
            out.write("\n")
            suite = unittest.TestSuite()
            for cls in plan.classes:
                tests = unittest.defaultTestLoader.loadTestsFromTestCase(cls)
                keep = [
                    t
                    for t in _iter_tests(tests)
                    if _short(t.id()) not in skip_ids
                    and is_excluded(_short(t.id()), patterns) is None
                ]
                if keep:
                    suite.addTest(unittest.TestSuite(keep))
            # Module-level fixtures (setUpModule/tearDownModule) run through the suite.
            unittest.TestSuite([suite]).run(result)
            out.flush()
    return 0


# --------------------------------------------------------------------------- parent side


@dataclass
class Unit:
    """One subprocess worth of modules on one loop."""

    side: str
    loop: str
    modules: list[str]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    module_skips: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    restarts: int = 0
    problems: list[str] = field(default_factory=list)


def _read_records(path: Path, unit: Unit) -> str | None:
    """Merge a child's JSON lines into the unit; return the id of a test left unfinished."""
    open_test: str | None = None
    if not path.exists():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        event = rec.get("event")
        if event == "start":
            open_test = rec["id"]
        elif event == "plan":
            unit.plans[rec["module"]] = rec["replaced"]
        elif event == "module_skip":
            unit.module_skips[rec["module"]] = rec["reason"]
        elif event is None:
            unit.records[rec["id"]] = rec
            if rec["id"] == open_test:
                open_test = None
    return open_test


def _crash_report(path: Path, since: int, limit: int = 3) -> tuple[str, str]:
    """From faulthandler's last dump in the log: its headline and the test thread's frames."""
    if not path.exists():
        return "", ""
    with open(path, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode("utf-8", errors="replace")
    start = max(text.rfind("Timeout ("), text.rfind("Fatal Python error"))
    if start < 0:
        return "", ""
    dump = text[start:]
    headline = dump.splitlines()[0].strip()
    for block in re.split(r"\n\s*\n|(?=Thread 0x)|(?=Current thread 0x)", dump):
        frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', block)
        if any(f[0].endswith(os.path.join("unittest", "case.py")) for f in frames):
            where = " <- ".join(f"{Path(f[0]).name}:{f[1]} {f[2]}" for f in frames[:limit])
            return headline, where
    return headline, ""


def _exit_reason(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"child killed by {signal.Signals(-rc).name}"
    return f"child exited with status {rc}"


def _tail(path: Path, lines: int = 12) -> str:
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def run_unit(
    unit: Unit,
    exclusions: dict[str, str],
    test_timeout: float,
    unit_timeout: float,
    workdir: Path,
    stop: threading.Event,
    shim: bool = False,
    memory_limit_mb: int = 4096,
) -> Unit:
    """Run a unit in a subprocess; after a hang or crash, resume past the offending test."""
    script = str(Path(__file__).resolve())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    tag = f"{unit.side}-{unit.modules[0]}"
    out = workdir / f"{tag}.jsonl"
    log = workdir / f"{tag}.log"
    skip_file = workdir / f"{tag}.skip.json"
    cwd = workdir / tag
    cwd.mkdir(exist_ok=True)
    started = time.monotonic()
    while not stop.is_set():
        skip = {"ids": sorted(unit.records), "patterns": sorted(exclusions)}
        skip_file.write_text(json.dumps(skip))
        cmd = [sys.executable, script, "--child", "--loop", unit.loop]
        cmd += ["--modules", ",".join(unit.modules), "--out", str(out), "--log", str(log)]
        cmd += ["--skip-file", str(skip_file), "--test-timeout", str(test_timeout)]
        cmd += ["--memory-limit-mb", str(memory_limit_mb)]
        cmd += ["--shim-default-executor"] if shim else []
        log_start = log.stat().st_size if log.exists() else 0
        with open(log, "a") as log_fh:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            stalled = timed_out = False
            while (rc := proc.poll()) is None:
                time.sleep(0.25)
                now = time.monotonic()
                # faulthandler's timer in the child can itself be stuck (a child out of
                # memory); the output file's age is the parent's own per-test watchdog.
                quiet = time.time() - (out.stat().st_mtime if out.exists() else time.time())
                timed_out = now - started > unit_timeout or stop.is_set()
                stalled = quiet > test_timeout + 15
                if timed_out or stalled:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
                    break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        open_test = _read_records(out, unit)
        if rc == 0 and not (timed_out or stalled):
            break
        why = "unit timeout" if timed_out else _exit_reason(rc)
        if open_test is None:
            unit.problems.append(f"{why} outside any test:\n{_tail(log)}")
            break
        headline, frames = _crash_report(log, log_start)
        if stalled or timed_out or headline.startswith("Timeout"):
            detail = f"no result within {test_timeout:g}s; stuck in {frames or '?'}"
            outcome = "hung"
        else:
            where = f"; at {frames}" if frames else ""
            detail = f"{why}: {headline or _tail(log, 4)}{where}"
            outcome = "error"
        unit.records[open_test] = {
            "id": open_test,
            "outcome": outcome,
            "detail": detail,
            "loop_used": True,
        }
        unit.restarts += 1
        if timed_out or unit.restarts > 20:
            unit.problems.append(f"gave up after {why}; tests not run are reported missing")
            break
    unit.seconds = time.monotonic() - started
    return unit


def make_units(side: str, loop: str, modules: Sequence[str]) -> list[Unit]:
    heavy = [m for m in modules if m in HEAVY_MODULES]
    light = [m for m in modules if m not in HEAVY_MODULES]
    units = [Unit(side, loop, [m]) for m in heavy]
    if light:
        units.append(Unit(side, loop, light))
    return units


def is_excluded(test_id: str, exclusions: dict[str, str]) -> str | None:
    for pattern, reason in exclusions.items():
        if test_id == pattern or fnmatch.fnmatchcase(test_id, pattern):
            return reason
    return None


def load_exclusions(path: Path) -> dict[str, str]:
    """Read EXCLUSIONS from a Python file; an entry without a reason is a usage error."""
    if not path.is_file():
        raise UsageError(f"exclusions file {path} does not exist; give a file defining EXCLUSIONS")
    spec = importlib.util.spec_from_file_location("_conformance_exclusions", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"exclusions file {path} cannot be loaded as Python")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        raise UsageError(f"exclusions file {path} fails to load: {exc!r}") from exc
    raw = getattr(mod, "EXCLUSIONS", None)
    if not isinstance(raw, dict):
        raise UsageError(f"exclusions file {path} must define EXCLUSIONS = {{id: reason}}")
    exclusions = {str(k): str(v) for k, v in raw.items()}
    for key, reason in exclusions.items():
        if not reason.strip():
            raise UsageError(f"exclusion {key!r} in {path} has no reason; add one")
    return exclusions


def available_modules() -> tuple[list[str], dict[str, str]]:
    spec = importlib.util.find_spec("test.test_asyncio")
    assert spec is not None and spec.submodule_search_locations is not None
    present = {
        p.stem for loc in spec.submodule_search_locations for p in Path(loc).glob("test_*.py")
    }
    runnable = [m for m in KNOWN_MODULES if m in present]
    unknown = sorted(present - set(KNOWN_MODULES) - set(SKIPPED_MODULES))
    extra = {m: "new in this Python; not classified yet (run it with --modules)" for m in unknown}
    skipped = {m: r for m, r in SKIPPED_MODULES.items() if m in present}
    return runnable + unknown, {**skipped, **extra}


def _counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for rec in records:
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
    return counts


def _cell(c: dict[str, int]) -> str:
    return (
        f"{c['pass'] + c['xfail']:>4} {c['fail'] + c['xpass']:>4} "
        f"{c['error'] + c['hung'] + c['missing']:>4} {c['skip']:>4}"
    )


def build_report(
    modules: Sequence[str],
    loop_units: Sequence[Unit],
    against_units: Sequence[Unit],
    exclusions: dict[str, str],
    args: argparse.Namespace,
) -> tuple[str, dict[str, Any], int]:
    """Compare both sides per module; the exit status is 1 iff some test regressed."""
    mine: dict[str, dict[str, Any]] = {}
    theirs: dict[str, dict[str, Any]] = {}
    for u in loop_units:
        mine.update(u.records)
    for u in against_units:
        theirs.update(u.records)
    for tid in theirs:
        if tid not in mine:
            reason = is_excluded(tid, exclusions)
            mine[tid] = (
                {"id": tid, "outcome": "excluded", "detail": reason, "loop_used": True}
                if reason is not None
                else {"id": tid, "outcome": "missing", "detail": "not run", "loop_used": True}
            )
    for tid, rec in mine.items():
        reason = is_excluded(tid, exclusions)
        if reason is not None and rec["outcome"] not in OK:
            rec["outcome"], rec["detail"] = "excluded", reason

    left, right = args.loop, args.against
    lines: list[str] = []
    width = max(len(m) for m in modules) if modules else 10
    shim = " (with --shim-default-executor)" if args.shim_default_executor else ""
    lines.append(f"CPython {sys.version.split()[0]} test.test_asyncio: {left} vs {right}{shim}")
    head_l = f"{left[:19]:^19}"
    head_r = f"{right[:19]:^19}"
    lines.append(
        f"{'':{width}} {'tests':>5} {'loop':>5} | {head_l} | {head_r} | {'excl':>4} {'diff':>4}"
    )
    sub = "pass fail  err skip"
    lines.append(f"{'module':{width}} {'run':>5} {'spec':>5} | {sub} | {sub} |")
    regressions: list[dict[str, Any]] = []
    per_module: dict[str, Any] = {}
    total_l: list[dict[str, Any]] = []
    total_r: list[dict[str, Any]] = []
    for m in modules:
        ids = sorted({t for t in (*mine, *theirs) if t.split(".", 1)[0] == m})
        recs_l = [mine[t] for t in ids if t in mine]
        recs_r = [theirs[t] for t in ids if t in theirs]
        total_l += recs_l
        total_r += recs_r
        specific = sum(
            1 for t in ids if mine.get(t, {}).get("loop_used") or theirs.get(t, {}).get("loop_used")
        )
        regs = [
            {
                "id": t,
                "outcome": mine[t]["outcome"],
                "detail": mine[t].get("detail", ""),
                "loop_specific": bool(mine[t].get("loop_used") or theirs[t].get("loop_used")),
            }
            for t in ids
            if theirs.get(t, {}).get("outcome") in OK
            and mine[t]["outcome"] not in OK | {"excluded"}
        ]
        regressions += regs
        cl, cr = _counts(recs_l), _counts(recs_r)
        per_module[m] = {"tests": len(ids), "loop_specific": specific, "loop": cl, "against": cr}
        lines.append(
            f"{m:{width}} {len(ids):>5} {specific:>5} | {_cell(cl)} | {_cell(cr)} | "
            f"{cl['excluded']:>4} {len(regs):>4}"
        )
    cl, cr = _counts(total_l), _counts(total_r)
    lines.append(
        f"{'TOTAL':{width}} {len(total_l):>5} {'':>5} | {_cell(cl)} | {_cell(cr)} | "
        f"{cl['excluded']:>4} {len(regressions):>4}"
    )
    lines.append(
        "(loop spec = tests that created a loop of the chosen kind; err includes hung/missing)"
    )
    usage: dict[str, dict[str, list[int]]] = {}
    for tid in {*mine, *theirs}:
        mod, _, rest = tid.partition(".")
        used = bool(mine.get(tid, {}).get("loop_used") or theirs.get(tid, {}).get("loop_used"))
        counts = usage.setdefault(mod, {}).setdefault(rest.split(".", 1)[0], [0, 0])
        counts[0 if used else 1] += 1
    lines.append("")
    lines.append("Not loop-specific (tests that never created a loop of the chosen kind):")
    for mod in modules:
        never = sorted(c for c, (u, n) in usage.get(mod, {}).items() if u == 0 and n)
        partly = sorted(
            f"{c} ({n} of {u + n})" for c, (u, n) in usage.get(mod, {}).items() if u and n
        )
        if never:
            lines.append(f"  {mod}: whole classes: {', '.join(never)}")
        if partly:
            lines.append(f"  {mod}: some tests of: {', '.join(partly)}")
    replaced: dict[str, dict[str, list[str]]] = {}
    for u in (*loop_units, *against_units):
        for mod, plan in u.plans.items():
            replaced.setdefault(mod, plan)
    if any(replaced.values()):
        lines.append("")
        lines.append("Per-selector classes replaced by one class on the chosen loop:")
        for mod in modules:
            for new, old in replaced.get(mod, {}).items():
                lines.append(f"  {mod}: {new} <- {', '.join(old)}")
    skipped_units = {m: r for u in (*loop_units, *against_units) for m, r in u.module_skips.items()}
    for mod, reason in sorted(skipped_units.items()):
        lines.append(f"  module {mod} skipped itself: {reason}")
    problems: dict[str, list[str]] = {}
    for u in (*loop_units, *against_units):
        for p in u.problems:
            problems.setdefault(p, []).append(f"{u.side} {','.join(u.modules)}")
    if problems:
        lines.append("")
        lines.append("Run problems:")
        for p, where in problems.items():
            lines.append(f"  [{'; '.join(where)}] " + p.replace("\n", "\n    "))
    excluded_by: dict[str, int] = {}
    for tid, rec in mine.items():
        if rec["outcome"] == "excluded":
            key = next((p for p in exclusions if tid == p or fnmatch.fnmatchcase(tid, p)), "?")
            excluded_by[key] = excluded_by.get(key, 0) + 1
    if excluded_by:
        lines.append("")
        lines.append(f"Excluded on {left} (conformance/exclusions.py or --exclusions):")
        for key, n in sorted(excluded_by.items()):
            lines.append(f"  {n:>5}  {key}: {exclusions.get(key, '')[:100]}")
    lines.append("")
    if regressions:
        causes: dict[str, int] = {}
        for r in regressions:
            first = str(r["detail"]).split(" (+ later ")[0]
            key = f"{r['outcome']}: " + re.sub(r"0x[0-9a-f]+|\d+", "N", first)[:110]
            causes[key] = causes.get(key, 0) + 1
        lines.append("Most common causes of the differences:")
        for key, n in sorted(causes.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {n:>5}  {key}")
        lines.append("")
        lines.append(f"Pass on {right} but not on {left} ({len(regressions)}):")
        for r in regressions:
            flag = "" if r["loop_specific"] else " [not loop-specific]"
            lines.append(f"  {r['id']}: {r['outcome']}{flag}: {str(r['detail'])[:160]}")
    else:
        lines.append(f"Every test that passes on {right} passes (or is excluded) on {left}.")
    data = {
        "python": sys.version,
        "loop": left,
        "against": right,
        "modules": per_module,
        "replaced_classes": replaced,
        "regressions": regressions,
        "results": {"loop": mine, "against": theirs},
        "units": [
            {
                "side": u.side,
                "modules": u.modules,
                "seconds": round(u.seconds, 2),
                "restarts": u.restarts,
                "problems": u.problems,
            }
            for u in (*loop_units, *against_units)
        ],
    }
    return "\n".join(lines), data, (1 if regressions else 0)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr, not the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see --help", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = _Parser(
        description="Run CPython's test.test_asyncio against an event loop and compare.",
    )
    p.add_argument("--loop", default="muxio", help="asyncio, uvloop, muxio or module:callable")
    p.add_argument("--against", default="asyncio", help="reference loop (same choices)")
    p.add_argument("--modules", default="", help="comma-separated, e.g. test_events,test_tasks")
    jobs = min(4, os.cpu_count() or 2)
    p.add_argument("--jobs", type=int, default=jobs, help=f"subprocesses at once ({jobs})")
    p.add_argument("--json", dest="json_out", default=None, help="write per-test results here")
    p.add_argument("--test-timeout", type=float, default=45.0, help="seconds per test (45)")
    p.add_argument("--unit-timeout", type=float, default=600.0, help="seconds per subprocess (600)")
    p.add_argument(
        "--memory-limit-mb", type=int, default=4096, help="heap cap per subprocess (4096)"
    )
    p.add_argument("--exclusions", help="exclusions file (default conformance/exclusions.py)")
    p.add_argument("--no-exclusions", action="store_true", help="ignore exclusions")
    p.add_argument(
        "--shim-default-executor",
        action="store_true",
        help="let loops without the private _default_executor through the suite's cleanup",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    p.add_argument("--skip-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return child_main(args)
    try:
        if (
            importlib.util.find_spec("test") is None
            or importlib.util.find_spec("test.test_asyncio") is None
        ):
            print(
                f"skipped: this Python ({sys.executable}) ships without the 'test' package",
                file=sys.stderr,
            )
            return 0
        for name in (args.loop, args.against):
            check_loop(resolve_loop(name))
        if "muxio" in (args.loop, args.against):
            from muxio import _build

            print(f"muxio build: {_build.describe()} ({_build.PACKAGE_DIR})", flush=True)
            if (wrong := _build.expectation_error()) is not None:
                raise LoopBroken(wrong)
        if args.jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
        runnable, skipped = available_modules()
        if args.modules:
            modules = []
            for raw in args.modules.split(","):
                name = raw.strip()
                name = name if name.startswith("test_") else f"test_{name}"
                if name in skipped and name in SKIPPED_MODULES:
                    raise UsageError(f"module {name} is not run: {skipped[name]}")
                if name in KNOWN_MODULES and name not in runnable:
                    raise UsageError(
                        f"module {name} is not in this Python's test.test_asyncio "
                        f"({sys.version.split()[0]}); drop it from --modules"
                    )
                if name not in runnable and name not in skipped:
                    raise UsageError(
                        f"unknown module {raw.strip()!r}; choose from {', '.join(runnable)}"
                    )
                modules.append(name)
        else:
            modules = [m for m in runnable if m not in skipped]
        default_excl = Path(__file__).resolve().parent / "exclusions.py"
        exclusions = (
            {} if args.no_exclusions else load_exclusions(Path(args.exclusions or default_excl))
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LoopBroken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    loop_units = make_units("loop", args.loop, modules)
    against_units = make_units("against", args.against, modules)
    order = sorted(
        [*loop_units, *against_units],
        key=lambda u: KNOWN_MODULES.index(u.modules[0]) if u.modules[0] in KNOWN_MODULES else 99,
    )
    stop = threading.Event()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="asyncio-suite-") as tmp,
        ThreadPoolExecutor(max_workers=args.jobs) as pool,
    ):
        futures = [
            pool.submit(
                run_unit,
                u,
                exclusions if u.side == "loop" else {},
                args.test_timeout,
                args.unit_timeout,
                Path(tmp),
                stop,
                args.shim_default_executor and u.side == "loop",
                args.memory_limit_mb,
            )
            for u in order
        ]
        try:
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            stop.set()
            raise
    elapsed = time.monotonic() - started
    text, data, status = build_report(modules, loop_units, against_units, exclusions, args)
    print(text)
    print(f"\nwall time {elapsed:.1f}s with --jobs {args.jobs}")
    for mod, reason in skipped.items():
        if not args.modules:
            print(f"module {mod} not run: {reason}")
    data["wall_seconds"] = round(elapsed, 2)
    data["skipped_modules"] = skipped
    data["exclusions"] = exclusions
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=1, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
