"""Every recipe of docs/integrations.md, run for real: servers on 127.0.0.1 port 0, real
HTTP requests, real processes stopped with SIGINT/SIGTERM and waited for.

Each server's app says which loop it runs on, at start-up (one line per worker
on stderr) and in every response, so a recipe that silently fell back to
asyncio's own loop fails here.  The packages are the `integrations` extra;
a test whose package is missing skips and says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import muxio

pytestmark = pytest.mark.timeout(90)

APPS = Path(__file__).resolve().parent / "integration_apps"
EXTRA = "pip install '.[integrations]'"
STARTED = re.compile(r"app started on (\S+) in (\d+)")


def need(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed: {EXTRA}")


class Program:
    """A command in its own session, stdout and stderr read line by line by a thread."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.lines: list[str] = []
        self._seen = 0
        self._eof = False
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_line(self, pattern: re.Pattern[str] | str, timeout: float = 30.0) -> re.Match[str]:
        """The next output line matching `pattern`, within `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while self._seen < len(self.lines):
                    line = self.lines[self._seen]
                    self._seen += 1
                    if (m := regex.search(line)) is not None:
                        return m
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    tail = "\n".join(self.lines[-15:])
                    raise AssertionError(f"no line matching {regex.pattern!r}:\n{tail}")
                self._changed.wait(left)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Signal the program, wait for it, then clear out any worker it left behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"{self.argv} still running {timeout:g} s after {signum!r}"
                ) from None
        finally:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self._reader.join(10)

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without muxio's own variables, HOME in a temporary folder."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith("MUXIO_") and k != "PYTHONPATH"
    }
    src = str(Path(muxio.__file__).resolve().parents[1])
    return dict(base, HOME=str(tmp_path), PYTHONUNBUFFERED="1", PYTHONPATH=src)


@contextlib.contextmanager
def running(argv: Sequence[str], env: dict[str, str], signum: int = signal.SIGINT,
            ) -> Iterator[Program]:
    program = Program(argv, env)
    try:
        yield program
    finally:
        rc = program.stop(signum)
    assert rc == 0, f"exit code {rc}:\n{program.text}"


def get(port: int, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def assert_served_by_muxio(port: int) -> str:
    status, body = get(port)
    assert status == 200, body
    assert body.startswith("muxio."), body
    return body


def started_workers(program: Program, count: int) -> set[str]:
    """Wait for `count` workers' start-up lines; each must name muxio's loop."""
    pids = set()
    for _ in range(count):
        module, pid = program.wait_line(STARTED).groups()
        assert module.startswith("muxio."), program.text
        pids.add(pid)
    assert len(pids) == count, program.text
    return pids


PY = sys.executable
UVICORN_PORT = r"Uvicorn running on http://127\.0\.0\.1:(\d+)"


# -- uvicorn ------------------------------------------------------------------------------


def test_uvicorn_command_line_loop_option(env: dict[str, str]) -> None:
    need("uvicorn")
    argv = [PY, "-m", "uvicorn", "asgi_app:app", "--loop", "muxio:new_event_loop", "--port", "0"]
    with running(argv, env) as uv:
        started_workers(uv, 1)
        port = int(uv.wait_line(UVICORN_PORT)[1])
        assert "http=1.1" in assert_served_by_muxio(port)


def test_muxio_run_puts_the_uvicorn_command_on_muxios_loop(env: dict[str, str]) -> None:
    """uvicorn's `--loop auto` names asyncio's loop itself: `muxio run` makes it ask the policy."""
    need("uvicorn")
    argv = [PY, "-m", "muxio", "run", "-m", "uvicorn", "asgi_app:app", "--port", "0"]
    with running(argv, env) as uv:
        started_workers(uv, 1)
        port = int(uv.wait_line(UVICORN_PORT)[1])
        assert_served_by_muxio(port)


def test_uvicorn_slow_callback_at_import_is_silenced_by_the_environment(
    env: dict[str, str],
) -> None:
    """The app's import holds each worker's loop 0.3 s: logged by default, not with 0.

    uvicorn's workers import the app on the loop (a single process imports it
    before the loop starts), which is where a user meets the warning.
    """
    need("uvicorn")
    argv = [
        PY, "-m", "uvicorn", "asgi_app:app", "--loop", "muxio:new_event_loop",
        "--port", "0", "--workers", "2",
    ]
    outputs = {}
    for setting in ("default", "0"):
        run_env = dict(env, APP_BLOCK_AT_IMPORT="0.3")
        if setting != "default":
            run_env["MUXIO_SLOW_CALLBACK_MS"] = setting
        with running(argv, run_env) as uv:
            port = int(uv.wait_line(UVICORN_PORT)[1])
            started_workers(uv, 2)
            assert_served_by_muxio(port)
        outputs[setting] = uv.text
    blocked = [int(ms) for ms in re.findall(r"slow callback: the loop was blocked for (\d+) ms",
                                            outputs["default"])]
    assert len([ms for ms in blocked if ms >= 280]) >= 2, outputs["default"]
    assert "slow callback" not in outputs["0"], outputs["0"]


def test_uvicorn_run_from_code(env: dict[str, str]) -> None:
    need("uvicorn")
    with running([PY, "uvicorn_serve.py", "0"], env) as uv:
        started_workers(uv, 1)
        assert_served_by_muxio(int(uv.wait_line(UVICORN_PORT)[1]))


def test_uvicorn_workers_each_run_muxio(env: dict[str, str]) -> None:
    need("uvicorn")
    argv = [
        PY, "-m", "uvicorn", "asgi_app:app", "--loop", "muxio:new_event_loop",
        "--port", "0", "--workers", "2",
    ]
    with running(argv, env) as uv:
        port = int(uv.wait_line(UVICORN_PORT)[1])
        started_workers(uv, 2)
        assert_served_by_muxio(port)


# -- gunicorn -----------------------------------------------------------------------------

GUNICORN_PORT = r"Listening at: http://127\.0\.0\.1:(\d+)"


def test_gunicorn_uvicorn_worker(env: dict[str, str]) -> None:
    need("gunicorn")
    need("uvicorn_worker")
    argv = [
        PY, "-m", "gunicorn", "-k", "muxio.gunicorn.UvicornWorker", "-w", "2",
        "-b", "127.0.0.1:0", "asgi_app:app",
    ]
    with running(argv, env, signal.SIGTERM) as gu:
        port = int(gu.wait_line(GUNICORN_PORT)[1])
        started_workers(gu, 2)
        assert_served_by_muxio(port)


def test_gunicorn_aiohttp_worker(env: dict[str, str]) -> None:
    need("gunicorn")
    argv = [
        PY, "-m", "gunicorn", "-k", "muxio.gunicorn.AiohttpWorker", "-w", "2",
        "-b", "127.0.0.1:0", "aiohttp_app:app",
    ]
    with running(argv, env, signal.SIGTERM) as gu:
        port = int(gu.wait_line(GUNICORN_PORT)[1])
        started_workers(gu, 2)
        assert_served_by_muxio(port)


def test_gunicorn_module_without_gunicorn_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['gunicorn'] = None\n"
        "try:\n    import muxio.gunicorn\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == (
        "muxio.gunicorn needs gunicorn, which is not installed here: "
        "pip install 'muxio[integrations]'"
    ), out.stderr


def test_a_gunicorn_worker_without_its_server_says_what_to_install() -> None:
    need("gunicorn")
    code = (
        "import sys; sys.modules['uvicorn_worker'] = None\n"
        "import muxio.gunicorn as workers\n"
        "try:\n    workers.UvicornWorker\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == (
        "muxio.gunicorn.UvicornWorker needs uvicorn-worker, which is not installed here: "
        "pip install 'muxio[integrations]'"
    ), out.stderr


# -- hypercorn, through muxio run ---------------------------------------------------------

HYPERCORN_PORT = r"Running on http://127\.0\.0\.1:(\d+)"


def test_muxio_run_hypercorn_answers_http2(env: dict[str, str]) -> None:
    need("hypercorn")
    httpx = pytest.importorskip("httpx", reason=f"httpx is not installed: {EXTRA}")
    need("h2")
    argv = [PY, "-m", "muxio", "run", "-m", "hypercorn", "asgi_app:app", "--bind", "127.0.0.1:0"]
    with running(argv, env) as hc:
        started_workers(hc, 1)
        port = int(hc.wait_line(HYPERCORN_PORT)[1])
        # h2c with prior knowledge: HTTP/2 from the first byte, no upgrade
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            response = client.get(f"http://127.0.0.1:{port}/")
        assert response.http_version == "HTTP/2"
        assert response.text.startswith("muxio."), response.text
        assert "http=2" in response.text


def test_muxio_run_hypercorn_workers_get_muxio_too(env: dict[str, str]) -> None:
    """hypercorn's workers are spawned Pythons: muxio run's start-up hook reaches them."""
    need("hypercorn")
    argv = [
        PY, "-m", "muxio", "run", "-m", "hypercorn", "asgi_app:app",
        "--bind", "127.0.0.1:0", "--workers", "2",
    ]
    with running(argv, env) as hc:
        started_workers(hc, 2)


# -- aiohttp, anyio, Starlette -------------------------------------------------------------


def test_aiohttp_run_app_with_a_muxio_loop(env: dict[str, str]) -> None:
    need("aiohttp")
    with running([PY, "aiohttp_app.py", "0"], env) as aio:
        started_workers(aio, 1)
        assert_served_by_muxio(int(aio.wait_line(HYPERCORN_PORT)[1]))


def test_anyio_run_with_the_loop_factory() -> None:
    anyio = pytest.importorskip("anyio", reason=f"anyio is not installed: {EXTRA}")

    async def main() -> str:
        await anyio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    module = anyio.run(main, backend_options={"loop_factory": muxio.new_event_loop})
    assert module == "muxio.loop"


def test_starlette_test_client_on_muxio() -> None:
    need("starlette")
    if importlib.util.find_spec("httpx2") is None and importlib.util.find_spec("httpx") is None:
        pytest.skip(f"Starlette's TestClient needs httpx2 (or httpx): {EXTRA}")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(type(asyncio.get_running_loop()).__module__)

    app = Starlette(routes=[Route("/", home)])
    with TestClient(app, backend_options={"loop_factory": muxio.new_event_loop}) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.text == "muxio.loop"


# -- pytest-asyncio and anyio's pytest plugin ----------------------------------------------

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


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    need("pytest_asyncio")
    need("anyio")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_loops=ASYNC_TESTS)
    return pytester


@pytest.mark.parametrize("ask", [["-p", "muxio.pytest_plugin"], ["--event-loop=muxio"]])
def test_pytest_plugin_runs_both_kinds_of_async_test_on_muxio(
    suite: pytest.Pytester, ask: list[str]
) -> None:
    result = suite.runpytest_subprocess(*ask, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["event loop: muxio (muxio.pytest_plugin)"])


def test_pytest_plugin_is_inert_unless_asked(suite: pytest.Pytester) -> None:
    """Installed, the plugin loads in every pytest run: unasked, it must change nothing."""
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.no_fnmatch_line("event loop: muxio*")


def test_pytest_plugin_event_loop_default_wins_over_p(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "-p", "muxio.pytest_plugin", "--event-loop=default", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=2)
