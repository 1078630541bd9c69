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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

_INSTALL = "pip install 'muxio[integrations]'"

try:
    import gunicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"muxio.gunicorn needs gunicorn, which is not installed here: {_INSTALL}"
    ) from exc


def _missing(worker: str, package: str, exc: ImportError) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ImportError(
            f"muxio.gunicorn.{worker} needs {package}, which is not installed here: {_INSTALL}"
        ) from exc

    return fail


def _install_policy() -> None:
    from .launch import install_policy

    install_policy()


try:
    from uvicorn_worker import UvicornWorker as _UvicornBase
except ImportError as _uvicorn_missing:  # pragma: no cover - depends on what is installed
    UvicornWorker: Any = _missing("UvicornWorker", "uvicorn-worker", _uvicorn_missing)
else:

    class UvicornWorker(_UvicornBase):  # type: ignore[no-redef,misc]
        """uvicorn's maintained gunicorn worker, with `--loop muxio:new_event_loop`."""

        CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - the base's own override point
            **_UvicornBase.CONFIG_KWARGS,
            "loop": "muxio:new_event_loop",
        }


try:
    from aiohttp.worker import GunicornWebWorker as _AiohttpBase
except ImportError as _aiohttp_missing:  # pragma: no cover - depends on what is installed
    AiohttpWorker: Any = _missing("AiohttpWorker", "aiohttp", _aiohttp_missing)
else:

    class AiohttpWorker(_AiohttpBase):  # type: ignore[no-redef]
        """aiohttp's worker on muxio's policy, as `GunicornUVLoopWebWorker` is on uvloop's."""

        def init_process(self) -> None:
            # the arbiter's loop, if it made one, must not leak into the worker
            with contextlib.suppress(RuntimeError):
                asyncio.get_event_loop().close()
            _install_policy()
            super().init_process()


__all__ = ["AiohttpWorker", "UvicornWorker"]
