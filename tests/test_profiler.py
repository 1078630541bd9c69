"""The loop profiler: where loop time goes, by task and coroutine chain, and idle apart.

Shares are checked on CPU-time profiles of work burnt by CPU time
(`time.thread_time()`), in many short bursts interleaved: a machine busy
with other work slows every burst alike, so the shares hold under load.
No assertion here is about how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import muxio as muxio_package
from muxio import EventLoop
from muxio.profiler import IDLE, Profile, ProfileError
from tests.helpers import MUXIO_PATH, ServeProcess, one_line, round_trip

SRC = MUXIO_PATH
"""The tests' own muxio for a child process: the same build (compiled or pure) as here."""
ROOT = str(Path(__file__).resolve().parents[1])
WALL_SAMPLER = "c-thread" if muxio_package.COMPILED else "signal"
"""The compiled build samples wall time from a GIL-free thread (`muxio._sampler`)."""
compiled_only = pytest.mark.skipif(
    not muxio_package.COMPILED, reason="the GIL-free sampler thread is the compiled build's"
)


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


ROUNDS = 1000
"""Bursts per coroutine: 4 s of CPU in all, about 1,000 samples at HZ=250 (a 60 % share's
standard error is then 1.5 points, so ±5 points is more than three of them)."""


BURNT: dict[int, float] = {}
"""CPU seconds each burner (by seed) really burnt: what the profile's shares are held to."""


async def burner(mean: float, idles: bool, seed: int, rounds: int) -> None:
    """Bursts of random length, exponentially distributed: never periodic.

    The kernel ticks every 4 ms (HZ=250) and one round of the three bursts
    lasts 4 ms on average: bursts of fixed (or nearly fixed) length keep
    their phase to the ticks from one round to the next, so the samples
    cluster and a share strays further (thirty at 34.8 % with lengths
    spread ±50 %).  Memoryless lengths lose the phase within a round.
    """
    rng = random.Random(seed)
    for i in range(rounds):
        start = time.thread_time()
        end = start + min(rng.expovariate(1 / mean), 6 * mean)
        while time.thread_time() < end:
            pass
        BURNT[seed] = BURNT.get(seed, 0.0) + time.thread_time() - start
        await asyncio.sleep(0.0005 if idles and i % 5 == 0 else 0)  # now and then the loop idles


async def sixty(rounds: int) -> None:
    await burner(0.0024, False, 1, rounds)


async def thirty(rounds: int) -> None:
    await burner(0.0012, False, 2, rounds)


async def ten(rounds: int) -> None:
    await burner(0.0004, True, 3, rounds)


def run(coro: Any) -> Any:
    loop = EventLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def profile_three(clock: str, rounds: int = ROUNDS) -> Profile:
    from muxio import profiler

    loop = asyncio.get_running_loop()
    sampler = profiler.start(loop, clock=clock)
    try:
        await asyncio.gather(
            asyncio.create_task(sixty(rounds), name="sixty"),
            asyncio.create_task(thirty(rounds), name="thirty"),
            asyncio.create_task(ten(rounds), name="ten"),
        )
    finally:
        result = sampler.stop()
    return result


def test_three_coroutines_burning_60_30_10_percent_are_attributed_within_5_points() -> None:
    BURNT.clear()
    profile = run(profile_three("cpu"))
    assert profile.sampler == "signal"
    shares = dict(profile.tasks())
    burnt = sum(BURNT.values())
    for task, coroutine, seed, nominal in (("sixty", "sixty", 1, 0.6),
                                           ("thirty", "thirty", 2, 0.3), ("ten", "ten", 3, 0.1)):
        expected = BURNT[seed] / burnt
        assert abs(expected - nominal) <= 0.03  # random lengths: near, not at, 60/30/10
        assert abs(shares[task] - expected) <= 0.05, (task, expected, shares, profile.samples)
        # the time is the coroutine's own (burner's, under it), under its task
        assert abs(profile.share(f"{coroutine} (") - expected) <= 0.05, profile.top(5)
    for stack in profile.stacks:
        assert IDLE not in stack


WALL_SCRIPT = """
import asyncio, json, sys, time
from muxio import EventLoop, profiler

async def blocker():
    for _ in range(120):
        time.sleep(0.003)  # holds the loop
        await asyncio.sleep(0.003)  # lets it wait in the poller

async def main():
    loop = asyncio.get_running_loop()
    task = loop.create_task(blocker(), name="blocker")
    sampler = profiler.start(loop, clock="wall")
    await task
    return sampler.stop()

loop = EventLoop()
profile = loop.run_until_complete(main())
loop.close()
import signal
restored = (signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
json.dump({"restored": restored, "sampler": profile.sampler, "clock": profile.clock,
           "tasks": dict(profile.tasks()),
           "blocker": profile.share("blocker ("), "idle": profile.idle_share,
           "stacks": [list(s) for s in profile.stacks]}, sys.stdout)
"""


def _in_child(script: str) -> Any:
    """Run `script` in a process of its own (pytest-timeout holds this one's SIGALRM); its JSON."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, ROOT])),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_wall_clock_blames_a_blocking_sleep_on_its_coroutine_and_waiting_on_no_one() -> None:
    result = _in_child(WALL_SCRIPT)
    assert (result["sampler"], result["clock"]) == (WALL_SAMPLER, "wall")
    assert result["restored"]  # SIGALRM's handler and timer are as they were
    assert result["tasks"].get("blocker", 0) >= 0.9, result["tasks"]
    assert result["blocker"] >= 0.9
    # about half the time waits in the poller: idle, and in no stack
    assert 0.2 <= result["idle"] <= 0.8, result["idle"]
    assert all(IDLE not in stack for stack in result["stacks"])


WALL_THREE_SCRIPT = """
import json
from tests.test_profiler import BURNT, IDLE, profile_three, run
profile = run(profile_three("wall", rounds=600))
print(json.dumps({"sampler": profile.sampler, "samples": profile.samples,
                  "seconds": profile.seconds, "tasks": dict(profile.tasks()),
                  "own": {c: profile.share(c + " (") for c in ("sixty", "thirty", "ten")},
                  "burnt": {str(k): v for k, v in BURNT.items()},
                  "idle_in_a_stack": any(IDLE in s for s in profile.stacks),
                  "outside_the_loop": [f for s in profile.stacks for f in s
                                       if f.startswith(("run (", "<module>"))]}))
"""


def test_the_wall_clock_attributes_60_30_10_percent_within_5_points() -> None:
    result = _in_child(WALL_THREE_SCRIPT)
    assert result["sampler"] == WALL_SAMPLER
    burnt = result["burnt"]
    total = sum(burnt.values())
    for task, seed in (("sixty", "1"), ("thirty", "2"), ("ten", "3")):
        expected = burnt[seed] / total
        assert abs(result["tasks"][task] - expected) <= 0.05, (task, expected, result)
        assert abs(result["own"][task] - expected) <= 0.05, (task, expected, result)
    assert not result["idle_in_a_stack"]
    assert result["outside_the_loop"] == []  # the frames that run the loop are no one's time


IDLE_LOOP_SCRIPT = """
import asyncio, json
from muxio import EventLoop, profiler

async def main():
    loop = asyncio.get_running_loop()
    before = loop.stats()["iterations"]
    sampler = profiler.start(loop, rate=1000, clock="wall")
    await asyncio.sleep(1.0)
    profile = sampler.stop()
    return {"sampler": profile.sampler, "samples": profile.samples,
            "idle": profile.idle_share, "iterations": loop.stats()["iterations"] - before}

loop = EventLoop()
print(json.dumps(loop.run_until_complete(main())))
"""


@compiled_only
def test_the_sampler_thread_counts_an_idle_loop_without_waking_it() -> None:
    result = _in_child(IDLE_LOOP_SCRIPT)
    assert result["sampler"] == "c-thread"
    assert result["samples"] > 0 and result["idle"] > 0.95
    # SIGALRM every tick woke the poller (the pure build: one iteration per sample)
    assert result["iterations"] * 10 < result["samples"], result


SIGNALS_WHILE_SAMPLING_SCRIPT = """
import asyncio, json, os, signal, threading
from muxio import EventLoop, profiler

async def main():
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, got.set)
    sampler = profiler.start(loop, rate=1000, clock="wall")
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    try:
        await asyncio.wait_for(got.wait(), 10)
    finally:
        profile = sampler.stop()
    return {"sampler": profile.sampler, "handled": got.is_set(),
            "alarm": signal.getsignal(signal.SIGALRM) == signal.SIG_DFL}

loop = EventLoop()
print(json.dumps(loop.run_until_complete(main())))
"""


def test_a_signal_the_loop_handles_arrives_while_the_wall_clock_samples() -> None:
    result = _in_child(SIGNALS_WHILE_SAMPLING_SCRIPT)
    assert result == {"sampler": WALL_SAMPLER, "handled": True, "alarm": True}


async def _profile_until(loop: Any, task: asyncio.Task[Any], clock: str) -> Profile:
    from muxio import profiler

    sampler = profiler.start(loop, clock=clock)
    try:
        await task
    finally:
        result = sampler.stop()
    return result


def test_collapsed_lines_go_from_the_task_through_the_await_chain_to_the_innermost_frame() -> None:
    async def inner() -> None:
        burn(0.002)

    async def outer() -> None:
        for _ in range(150):
            await inner()
            await asyncio.sleep(0)

    async def main() -> Profile:
        loop = asyncio.get_running_loop()
        return await _profile_until(loop, loop.create_task(outer(), name="chain"), "cpu")

    text = run(main()).collapsed()
    lines = text.splitlines()
    # a stack ends at the loop: `run()` here, which runs it, is no one's time
    assert not re.search(r"(^|;)run \(", text), text
    assert lines and all(re.fullmatch(r"[^;]+(;[^;]+)* \d+", line) for line in lines), text
    chain = [line for line in lines if line.startswith("chain;")]
    assert any(
        re.fullmatch(
            r"chain;.*outer \(.*test_profiler\.py:\d+\);.*inner \(.*\);burn \(.*\) \d+", line
        )
        for line in chain
    ), text
    # counts are microseconds of loop time: the burns were 0.3 s of CPU
    total = sum(int(line.rpartition(" ")[2]) for line in chain)
    assert 200_000 <= total <= 400_000, total


def test_profile_writes_speedscope_json_that_loads_back_and_has_the_schema_fields(
    tmp_path: Path,
) -> None:
    profile = run(profile_three("cpu", rounds=100))
    path = tmp_path / "p.json"
    profile.write_speedscope(path)
    doc = json.loads(path.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    assert all(isinstance(f["name"], str) for f in frames)
    assert any(f.get("file", "").endswith("test_profiler.py") and f["line"] > 0 for f in frames)
    (sampled,) = doc["profiles"]
    assert sampled["type"] == "sampled"
    assert sampled["unit"] == "microseconds"
    assert len(sampled["samples"]) == len(sampled["weights"]) > 0
    assert all(0 <= i < len(frames) for s in sampled["samples"] for i in s)
    assert sampled["startValue"] == 0 and sampled["endValue"] == sum(sampled["weights"])
    assert 0 <= doc["activeProfileIndex"] < len(doc["profiles"])

    back = Profile.load(path)
    assert back.stacks == profile.stacks and back.idle == profile.idle
    assert (back.clock, back.samples, back.sampler) == ("cpu", profile.samples, "signal")
    text_path = tmp_path / "p.txt"
    profile.write(text_path)  # not .json: collapsed stacks under one '#' line
    assert text_path.read_text().startswith("# muxio-profile ")
    again = Profile.load(text_path)
    assert again.stacks == profile.stacks and again.samples == profile.samples


def test_profile_restores_the_signal_and_timer_and_allows_one_profile_at_a_time() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(loop.profile(0.2))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="being profiled already"):
            await loop.profile(0.1)
        await first
        for bad in ({"seconds": 0}, {"seconds": 1, "rate": 0}, {"seconds": 1, "clock": "gpu"}):
            with pytest.raises(ValueError):
                await loop.profile(**bad)

    alarm = signal.getsignal(signal.SIGALRM)  # pytest-timeout's
    run(main())
    assert signal.getsignal(signal.SIGPROF) == signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is alarm


def test_a_loop_outside_the_main_thread_is_sampled_by_a_thread() -> None:
    results: list[Profile] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def block() -> None:
            for _ in range(100):
                time.sleep(0.003)
                await asyncio.sleep(0)

        results.append(await _profile_until(loop, loop.create_task(block(), name="off"), "cpu"))

    thread = threading.Thread(target=run, args=(main(),))
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    (profile,) = results
    assert (profile.sampler, profile.clock) == ("thread", "wall")
    assert dict(profile.tasks()).get("off", 0) >= 0.8
    assert signal.getsignal(signal.SIGPROF) == signal.SIG_DFL


def test_the_watchdog_names_the_loops_frame_not_the_profilers_signal_handler() -> None:
    from muxio import profiler, watchdog

    namespace: dict[str, Any] = {"sys": sys}
    exec(compile("def handler():\n    return sys._getframe()\n", profiler.__file__, "exec"),
         namespace)

    def user_code() -> Any:
        return namespace["handler"]()  # as if a tick came in here

    described = watchdog.describe_frame(user_code())
    assert "test_profiler.py" in described and "profiler.py:" not in described.replace(
        "test_profiler.py", ""
    ), described


# -- the command line ------------------------------------------------------------


def test_serve_profile_writes_a_speedscope_file_of_the_load_it_served(tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    sp = ServeProcess("--port", "0", "--profile", "1", "--profile-out", str(out))
    try:
        sp.wait_listening()
        with sp.connect() as sock:
            deadline = time.monotonic() + 20
            while not any("profile written to" in line for line in sp.lines):
                assert time.monotonic() < deadline, sp.tail()
                assert round_trip(sock, b"x" * 200) == b"X" * 200
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    finally:
        sp.kill()
    profile = Profile.load(out)
    assert profile.samples > 0 and profile.seconds == pytest.approx(1.0, abs=0.5)
    assert profile.share("UpperEcho.data_received") > 0, profile.top()


def test_a_wall_clock_profile_borrows_the_servers_sigalrm_and_gives_it_back(
    tmp_path: Path,
) -> None:
    out = tmp_path / "w.txt"
    with ServeProcess(
        "--port", "0", "--profile", "0.5", "--profile-clock", "wall", "--profile-out", str(out)
    ) as sp:
        sp.wait_listening()
        sp.wait_line(r"profile written to .*w\.txt")
        sp.signal(signal.SIGALRM)  # ignored again, as before the profile (not fatal)
        sp.signal(signal.SIGUSR1)
        sp.wait_line("SIGUSR1: statistics")
        with sp.connect() as sock:
            assert round_trip(sock, b"alive") == b"ALIVE"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    profile = Profile.load(out)
    assert (profile.clock, profile.sampler) == ("wall", WALL_SAMPLER)
    assert profile.samples > 0 and profile.idle_share > 0.5  # a server with nothing to do


def test_sigusr2_profiles_a_running_server_to_muxio_profile_out(tmp_path: Path) -> None:
    out = tmp_path / "p.txt"
    env = dict(os.environ, MUXIO_PROFILE_SECONDS="0.5", MUXIO_PROFILE_OUT=str(out))
    with ServeProcess("--port", "0", env=env) as sp:
        sp.wait_listening()
        with sp.connect() as sock:
            assert round_trip(sock, b"hi") == b"HI"
            sp.signal(signal.SIGUSR2)
            sp.wait_line(r"SIGUSR2: profiling the loop \(cpu time\) for 0.5 s")
            sp.wait_line(r"profile written to .*p\.txt")
            assert round_trip(sock, b"still") == b"STILL"
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert Profile.load(out).seconds > 0


def test_sigusr2_to_a_supervisor_makes_each_worker_write_its_own_profile(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    env = dict(os.environ, MUXIO_PROFILE_SECONDS="0.3")
    with ServeProcess(
        "--port", "0", "--workers", "2", "--profile-out", str(out), env=env
    ) as sp:
        sp.wait_listening()
        for _ in range(2):
            sp.wait_line(r"worker \d \(pid \d+\) ready")
        sp.signal(signal.SIGUSR2)
        for _ in range(2):
            sp.wait_line(r"profile written to .*p\.worker\d\.json")
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.worker1.json", "p.worker2.json"]


def muxio(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muxio", *args], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=SRC), cwd=cwd,
    )


def _app_profile(render: str, **meta: Any) -> Profile:
    """A handler rendering 60 %, itself 25 %, a transport 15 % of busy time; as long idle."""
    return Profile(
        {
            ("Task-N", "handler (app.py:10)", render): 600_000,
            ("Task-N", "handler (app.py:10)"): 250_000,
            ("(no task)", "Transport._on_read (stream.py:203)"): 150_000,
        },
        1_000_000,
        seconds=2.0, rate=1000, **meta,
    )


def test_profile_report_prints_the_top_sites_with_shares_and_the_idle_share(
    tmp_path: Path,
) -> None:
    profile = _app_profile("render (app.py:30)", clock="cpu", samples=500, sampler="signal")
    profile.write(tmp_path / "p.txt")
    done = muxio("profile-report", str(tmp_path / "p.txt"), "--top", "2")
    assert done.returncode == 0, done.stderr
    assert "idle (waiting in the poller):  50.0%" in done.stdout
    site_lines = [line for line in done.stdout.splitlines() if "app.py" in line or "stream" in line]
    assert re.search(r"60\.0%\s+60\.0%\s+render \(app\.py:30\)", site_lines[0]), done.stdout
    assert re.search(r"25\.0%\s+85\.0%\s+handler \(app\.py:10\)", done.stdout), done.stdout
    assert "Transport._on_read" not in "".join(site_lines[:2])  # --top 2


def test_profile_report_draws_a_flame_graph_whose_boxes_are_as_wide_as_their_time(
    tmp_path: Path,
) -> None:
    import xml.etree.ElementTree as ET

    profile = _app_profile(
        "render <1> (app.py:30)", clock="wall", samples=2000, sampler="c-thread"
    )
    profile.write(tmp_path / "p.json")
    done = muxio("profile-report", str(tmp_path / "p.json"), "--flamegraph",
                 str(tmp_path / "p.svg"))
    assert done.returncode == 0, done.stderr
    assert f"flame graph written to {tmp_path / 'p.svg'}" in done.stdout
    ns = {"s": "http://www.w3.org/2000/svg"}
    root = ET.parse(tmp_path / "p.svg").getroot()  # well-formed: the '<1>' is escaped
    boxes = {
        g.find("s:title", ns).text.split(": ")[0]: float(g.find("s:rect", ns).get("width"))
        for g in root.findall("s:g", ns)
    }
    assert set(boxes) == {"Task-N", "handler (app.py:10)", "render <1> (app.py:30)", "(no task)",
                          "Transport._on_read (stream.py:203)", IDLE}
    whole = sum(boxes[b] for b in ("Task-N", "(no task)", IDLE))  # the roots span the width
    assert boxes[IDLE] / whole == pytest.approx(0.5, abs=0.01)
    assert boxes["render <1> (app.py:30)"] / whole == pytest.approx(0.3, abs=0.01)
    assert boxes["handler (app.py:10)"] == pytest.approx(boxes["Task-N"])
    unwritable = muxio("profile-report", str(tmp_path / "p.json"), "--flamegraph",
                       str(tmp_path / "no" / "p.svg"))
    assert unwritable.returncode == 1
    assert "cannot write the flame graph" in one_line(unwritable.stderr.encode())


def test_profile_report_errs_in_one_line_on_a_missing_file_or_one_that_is_no_profile(
    tmp_path: Path,
) -> None:
    missing = muxio("profile-report", str(tmp_path / "nope.json"))
    assert missing.returncode == 1
    assert "cannot read the profile" in one_line(missing.stderr.encode())
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    for path in (junk, tmp_path / "junk.json"):
        if path.suffix == ".json":
            path.write_text('{"shared": 1}')
        done = muxio("profile-report", str(path))
        assert done.returncode == 2, done.stderr
        assert "profiler wrote" in one_line(done.stderr.encode())
    usage = muxio("profile-report")
    assert usage.returncode == 2 and "FILE" in usage.stderr
    with pytest.raises(ProfileError):
        Profile.load(junk)


def test_serve_refuses_a_profile_out_in_a_missing_directory_and_a_bad_profile_length(
    tmp_path: Path,
) -> None:
    done = muxio("serve", "--port", "0", "--profile", "1", "--profile-out",
                 str(tmp_path / "no" / "f.json"))
    assert done.returncode == 2
    assert "does not exist" in one_line(done.stderr.encode())
    for bad in ("0", "-1", "nan"):
        done = muxio("serve", "--port", "0", "--profile", bad)
        assert done.returncode == 2, done.stderr
        assert "--profile" in done.stderr
