"""gunicorn worker classes on muxio's loop: `gunicorn -k muxio.gunicorn.UvicornWorker app:app`.

What `uvicorn_worker.UvicornWorker` and `aiohttp.GunicornUVLoopWebWorker` are
for uvloop.  gunicorn forks its workers from the arbiter, so each one makes
its own loop after the fork; `MUXIO_POLLER` and `MUXIO_SLOW_CALLBACK_MS` tune
them like every loop muxio makes.  Each class needs its server installed
(`pip install muxio[integrations]`); the other's absence does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

_INSTALL = "pip install 'muxio[integrations]'"

try:
    import gunicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"muxio.gunicorn needs gunicorn, which is not installed here: {_INSTALL}"
    ) from exc


_MISSING: dict[str, tuple[str, ImportError]] = {}
"""Worker classes whose server is not installed: named on use, not on import."""


def __getattr__(name: str) -> Any:
    if name in _MISSING:
        package, exc = _MISSING[name]
        raise ImportError(
            f"muxio.gunicorn.{name} needs {package}, which is not installed here: {_INSTALL}"
        ) from exc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _install_policy() -> None:
    from .launch import install_policy

    install_policy()


try:
    from uvicorn_worker import UvicornWorker as _UvicornBase
except ImportError as exc:  # pragma: no cover - depends on what is installed
    _MISSING["UvicornWorker"] = ("uvicorn-worker", exc)
else:

    class UvicornWorker(_UvicornBase):  # type: ignore[misc]
        """uvicorn's maintained gunicorn worker, with `--loop muxio:new_event_loop`."""

        CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - the base's own override point
            **_UvicornBase.CONFIG_KWARGS,
            "loop": "muxio:new_event_loop",
        }


try:
    from aiohttp.worker import GunicornWebWorker as _AiohttpBase
except ImportError as exc:  # pragma: no cover - depends on what is installed
    _MISSING["AiohttpWorker"] = ("aiohttp", exc)
else:

    class AiohttpWorker(_AiohttpBase):
        """aiohttp's worker on muxio's policy, as `GunicornUVLoopWebWorker` is on uvloop's."""

        def init_process(self) -> None:
            # the arbiter's loop, if it made one, must not leak into the worker
            with contextlib.suppress(RuntimeError):
                asyncio.get_event_loop().close()
            _install_policy()
            super().init_process()


__all__ = ["AiohttpWorker", "UvicornWorker"]
