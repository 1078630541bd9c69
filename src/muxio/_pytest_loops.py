"""What `muxio.pytest_plugin` registers once asked: a module of its own, so it is inert before."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import pytest

from .policy import new_event_loop

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .loop import EventLoop

BACKENDS = ["asyncio"] + (["trio"] if importlib.util.find_spec("trio") is not None else [])
"""anyio's own default list: trio's tests still run on trio."""


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], EventLoop]]:
    return {"muxio": new_event_loop}


@pytest.fixture(scope="module", params=BACKENDS, ids=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "asyncio":
        return ("asyncio", {"loop_factory": new_event_loop})
    return request.param
