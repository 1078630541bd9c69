"""`muxio.pytest_plugin`: pytest-asyncio's and anyio's tests on muxio's loop, only when asked."""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_asyncio", reason="pytest-asyncio is in the integrations extra")
pytest.importorskip("anyio", reason="anyio is in the integrations extra")

pytest_plugins = ["pytester"]

ASYNC_TESTS = '''
import asyncio

import pytest


def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.asyncio
async def test_pytest_asyncio() -> None:
    assert loop_module().startswith("muxio"), loop_module()


@pytest.mark.anyio
async def test_anyio() -> None:
    assert loop_module().startswith("muxio"), loop_module()
'''

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(test_loops=ASYNC_TESTS)
    return pytester


@pytest.mark.parametrize("ask", [["-p", "muxio.pytest_plugin"], ["--event-loop=muxio"]])
def test_asked_for_both_kinds_of_test_run_on_muxio(suite: pytest.Pytester, ask: list[str]) -> None:
    result = suite.runpytest_subprocess(*ask, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["event loop: muxio (muxio.pytest_plugin)"])


def test_without_asking_the_loops_are_not_muxio(suite: pytest.Pytester) -> None:
    """Installed, the plugin is loaded in every pytest run: it must change nothing then."""
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*AssertionError: asyncio.unix_events*"])


def test_event_loop_default_overrides_the_plugin_flag(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "-p", "muxio.pytest_plugin", "--event-loop=default", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=2)
