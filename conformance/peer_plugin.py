"""pytest plugin for `peer_suites.py`: one loop for a peer's whole session, and proof of it.

Loaded with `-p peer_plugin` (conformance/ on `sys.path`); `MUXIO_PEER_LOOP` picks the
loop (`asyncio` or `muxio`) and `MUXIO_PEER_REPORT` names the JSON file it writes.  On
muxio's side the policy is installed for the whole session and re-installed when a test
resets it to `None`, so `asyncio.run`, `asyncio.Runner` (anyio's asyncio backend, without a
`loop_factory`), `IsolatedAsyncioTestCase` and `asyncio.new_event_loop()` (websockets) all
get muxio's loop without a line of the peer's tests changing; `muxio.pytest_plugin` is
loaded too, for anyio's `anyio_backend` where the peer's own fixture does not win.

Every loop made is counted by class (through `BaseEventLoop.__init__` and muxio's
`EventLoop.__init__`, so loops made past the policy are seen too); a session on muxio's
side that made any other loop fails at session end, with the tests that made them.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import functools
import json
import os
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

LOOP = os.environ.get("MUXIO_PEER_LOOP", "asyncio")
REPORT = os.environ.get("MUXIO_PEER_REPORT", "")
EXCLUDE: list[str] = json.loads(os.environ.get("MUXIO_PEER_EXCLUDE", "[]"))

_current: list[str] = ["<collection>"]
_loops: collections.Counter[str] = collections.Counter()
_foreign: dict[str, list[str]] = {}
_results: dict[str, dict[str, str]] = {}


def _record(loop: object) -> None:
    cls = type(loop)
    name = f"{cls.__module__}.{cls.__qualname__}"
    _loops[name] += 1
    if LOOP == "muxio" and not _is_muxio(loop):
        _foreign.setdefault(_current[0], []).append(name)


def _is_muxio(loop: object) -> bool:
    from muxio.loop import EventLoop

    return isinstance(loop, EventLoop)


def _counting(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # A loop class deriving from both patched classes would pass through both: count once.
        d = getattr(self, "__dict__", None)
        if d is None or "_peer_counted" not in d:
            if d is not None:
                d["_peer_counted"] = True
            _record(self)
        init(self, *args, **kwargs)

    return __init__


def _install_counters() -> None:
    import asyncio.base_events as base_events

    base: Any = base_events.BaseEventLoop
    base.__init__ = _counting(base.__init__)
    if LOOP == "muxio":
        from muxio.loop import EventLoop

        mux: Any = EventLoop
        mux.__init__ = _counting(mux.__init__)


def _install_muxio_policy() -> None:
    import muxio

    events: Any = asyncio.events

    def init_policy() -> None:
        if events._event_loop_policy is None:
            events._event_loop_policy = muxio.EventLoopPolicy()

    events._init_event_loop_policy = init_policy
    asyncio.set_event_loop_policy(muxio.EventLoopPolicy())


def pytest_configure(config: pytest.Config) -> None:
    if LOOP not in ("asyncio", "muxio"):
        raise pytest.UsageError(f"MUXIO_PEER_LOOP={LOOP!r}: use asyncio or muxio")
    _install_counters()
    if LOOP == "muxio":
        _install_muxio_policy()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not EXCLUDE:
        return
    keep = [i for i in items if not any(fnmatch.fnmatchcase(i.nodeid, p) for p in EXCLUDE)]
    dropped = [i for i in items if i not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    return f"peer suite loop: {LOOP} (conformance/peer_plugin.py)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _current[0] = item.nodeid
    try:
        return (yield)
    finally:
        _current[0] = "<between tests>"


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).strip().splitlines()[0] if crash.message else ""
    if isinstance(report.longrepr, tuple):  # skip: (file, line, reason)
        return str(report.longrepr[2])
    text = str(report.longrepr or "").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "detail": ""})
    if type(report).__name__ == "SubtestReport":
        # pytest 9's subtests report under the test's id, before the test's own report.
        if report.failed and entry["outcome"] != "error":
            entry["outcome"] = "failed"
            entry["detail"] = f"subtest: {_first_line(report)}"
        return
    if report.when == "call":
        if entry["outcome"] == "failed":
            return  # a failed subtest fails the test however its own call ended
        if report.passed:
            outcome = "passed"  # xpass under xfail_strict arrives as failed
        elif report.skipped:
            outcome = "passed" if hasattr(report, "wasxfail") else "skipped"
        else:
            outcome = "failed"
        if entry["outcome"] != "error":
            entry["outcome"] = outcome
            if outcome != "passed":
                entry["detail"] = _first_line(report)
    elif report.failed:
        entry["outcome"] = "error"
        entry["detail"] = f"{report.when}: {_first_line(report)}"
    elif report.skipped and report.when == "setup":
        entry["outcome"] = "skipped"
        entry["detail"] = _first_line(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _results[report.nodeid or "<collection>"] = {
            "outcome": "error",
            "detail": f"collect: {str(report.longrepr).strip().splitlines()[-1][:300]}",
        }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    muxio_loops = sum(n for name, n in _loops.items() if name.startswith("muxio."))
    problems: list[str] = []
    if LOOP == "muxio":
        if _foreign:
            problems.append(f"loops other than muxio's were made by {len(_foreign)} test(s)")
        if not muxio_loops and _results:
            problems.append("no muxio loop was made at all")
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(
                {
                    "loop": LOOP,
                    "loops_made": dict(_loops),
                    "foreign_loops": _foreign,
                    "problems": problems,
                    "tests": _results,
                },
                f,
                indent=1,
            )
    if problems:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            for problem in problems:
                tr.write_line(f"peer_plugin: {problem}", red=True)
            for nodeid, names in list(_foreign.items())[:20]:
                tr.write_line(f"  {nodeid}: {', '.join(sorted(set(names)))}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
