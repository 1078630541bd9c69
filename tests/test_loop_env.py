"""MUXIO_POLLER and MUXIO_SLOW_CALLBACK_MS: defaults for loops made by code muxio does not write."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from helpers import ServeProcess, one_line

import muxio
from muxio.loopenv import POLLER_VAR, SLOW_CALLBACK_VAR
from muxio.pollers import BACKENDS, available

pytestmark = pytest.mark.timeout(60)

NOT_BEST = available()[-1]  # select: never what auto picks where anything better exists
MISSING_POLLER = next((name for name in BACKENDS if name not in available()), "kqeue")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLLER_VAR, raising=False)
    monkeypatch.delenv(SLOW_CALLBACK_VAR, raising=False)


def made(**kwargs: object) -> muxio.EventLoop:
    loop = muxio.new_event_loop(**kwargs)  # type: ignore[arg-type]
    loop.close()
    return loop


def test_defaults_without_the_variables() -> None:
    loop = made()
    assert loop.poller.name == available()[0]
    assert loop._watch and loop.slow_callback_duration == 0.1


def test_poller_variable_picks_the_poller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLLER_VAR, NOT_BEST)
    assert made().poller.name == NOT_BEST
    monkeypatch.setenv(POLLER_VAR, " AUTO ")
    assert made().poller.name == available()[0]


def test_slow_callback_variable_sets_and_disables_the_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SLOW_CALLBACK_VAR, "250")
    loop = made()
    assert loop._watch and loop.slow_callback_duration == 0.25
    monkeypatch.setenv(SLOW_CALLBACK_VAR, "0")
    assert not made()._watch


def test_explicit_arguments_beat_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLLER_VAR, NOT_BEST)
    monkeypatch.setenv(SLOW_CALLBACK_VAR, "0")
    loop = made(poller="auto", slow_callback_ms=40)
    assert loop.poller.name == available()[0]
    assert loop._watch and loop.slow_callback_duration == 0.04
    assert not made(slow_callback_ms=None)._watch


def test_policy_reads_the_variables_at_each_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = muxio.EventLoopPolicy()
    monkeypatch.setenv(POLLER_VAR, NOT_BEST)
    loop = policy.new_event_loop()
    loop.close()
    assert loop.poller.name == NOT_BEST
    monkeypatch.setenv(POLLER_VAR, "auto")
    loop = policy.new_event_loop()
    loop.close()
    assert loop.poller.name == available()[0]
    fixed = muxio.EventLoopPolicy(NOT_BEST, slow_callback_ms=0)
    monkeypatch.setenv(SLOW_CALLBACK_VAR, "500")
    loop = fixed.new_event_loop()
    loop.close()
    assert loop.poller.name == NOT_BEST and not loop._watch


def test_run_reads_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, muxio.EventLoop)
        return loop.poller.name, loop._watch

    monkeypatch.setenv(POLLER_VAR, NOT_BEST)
    monkeypatch.setenv(SLOW_CALLBACK_VAR, "0")
    assert muxio.run(main()) == (NOT_BEST, False)
    assert muxio.run(main(), poller="auto", slow_callback_ms=100) == (available()[0], True)


@pytest.mark.parametrize("value", ["-1", "nan", "abc", "inf", "1e300", "12ms"])
def test_invalid_slow_callback_is_one_usage_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(SLOW_CALLBACK_VAR, value)
    with pytest.raises(muxio.UsageError) as info:
        muxio.new_event_loop()
    assert str(info.value) == (
        f"{SLOW_CALLBACK_VAR}={value!r}: use a number of milliseconds from 0 to 3600000 "
        "(0 turns the slow-callback watchdog off)"
    )


@pytest.mark.parametrize("value", ["kqeue", MISSING_POLLER, "-1", "nan"])
def test_invalid_poller_is_one_usage_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(POLLER_VAR, value)
    with pytest.raises(muxio.UsageError) as info:
        muxio.EventLoopPolicy().new_event_loop()
    assert str(info.value) == (
        f"{POLLER_VAR}={value!r}: not a poller here; choose one of "
        f"{', '.join(['auto', *available()])} (or unset it for auto)"
    )


def test_invalid_variable_is_one_line_exit_2_from_the_command_line() -> None:
    env = dict(os.environ, **{SLOW_CALLBACK_VAR: "-1"})
    out = subprocess.run(
        [sys.executable, "-m", "muxio", "serve", "--port", "0"],
        capture_output=True, env=env, timeout=30,
    )
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        f"muxio: {SLOW_CALLBACK_VAR}='-1': use a number of milliseconds from 0 to 3600000 "
        "(0 turns the slow-callback watchdog off)"
    )


def test_muxio_serve_uses_the_variable_when_its_flag_is_absent() -> None:
    env = dict(os.environ, **{POLLER_VAR: NOT_BEST})
    sp = ServeProcess("--port", "0", env=env)
    try:
        sp.wait_listening()
        assert any(f"poller {NOT_BEST}," in x for x in sp.lines), sp.lines
    finally:
        sp.kill()


def test_muxio_serve_flag_beats_the_variable() -> None:
    env = dict(os.environ, **{POLLER_VAR: NOT_BEST, SLOW_CALLBACK_VAR: "abc"})
    sp = ServeProcess("--port", "0", "--poller", "auto", "--slow-callback-ms", "50", env=env)
    try:
        sp.wait_listening()
        assert any(f"poller {available()[0]}," in x for x in sp.lines), sp.lines
    finally:
        sp.kill()
