"""Run pytest-asyncio's and anyio's async tests on muxio's loop.

`pytest -p muxio.pytest_plugin` or `pytest --event-loop=muxio` turns it on
(`--event-loop=default` turns it off again).  Installed, muxio registers this
module as a pytest plugin, and it stays inert until asked, so a project's
suite runs as before on whatever loop it had.  It answers pytest-asyncio's
`pytest_asyncio_loop_factories` hook (1.5+) and overrides anyio's
`anyio_backend` fixture with `("asyncio", {"loop_factory": muxio.new_event_loop})`;
a project's own `anyio_backend` fixture or hook still wins, as pytest's
nearest fixture always does.
"""

from __future__ import annotations

import pytest

PLUGIN_NAME = "muxio.pytest_plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("muxio").addoption(
        "--event-loop",
        dest="muxio_event_loop",
        choices=("default", "muxio"),
        default=None,
        help="muxio: run pytest-asyncio's and anyio's tests on muxio's loop "
        "(default: the loop they would use; -p muxio.pytest_plugin also turns it on)",
    )


def requested(config: pytest.Config) -> bool:
    """`--event-loop` decides; without it, naming this plugin with `-p` is the request."""
    choice = config.getoption("muxio_event_loop")
    if choice is not None:
        return bool(choice == "muxio")
    return PLUGIN_NAME in (getattr(config.option, "plugins", None) or [])


def _check_pytest_asyncio(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin("asyncio") and not hasattr(
        config.hook, "pytest_asyncio_loop_factories"
    ):
        raise pytest.UsageError(
            "--event-loop=muxio needs pytest-asyncio 1.5 or later (its "
            "pytest_asyncio_loop_factories hook): pip install -U pytest-asyncio"
        )


def pytest_configure(config: pytest.Config) -> None:
    if not requested(config):
        return
    _check_pytest_asyncio(config)
    from . import _pytest_loops

    config.pluginmanager.register(_pytest_loops, "muxio-loops")


def pytest_report_header(config: pytest.Config) -> str | None:
    return "event loop: muxio (muxio.pytest_plugin)" if requested(config) else None
