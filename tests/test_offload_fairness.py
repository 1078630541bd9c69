"""The offloader's queue is fair across keys: a newcomer waits for one job, not for all.

Counted, never timed: each job records its label as it runs in the
single worker thread, so the order the pool ran them in is the evidence.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import BEST_POLLER, RunLoop

from muxio import EventLoop
from muxio.offload import Offloader, Outcome

pytestmark = pytest.mark.timeout(60)

CLIENTS = 10
PIPELINED = 64
WARM_UP = 3 * CLIENTS


@pytest.fixture
def poller() -> str:
    return BEST_POLLER


@pytest.fixture
def offloader(loop: EventLoop) -> Iterator[Offloader]:
    off = Offloader("threads", max_workers=1)
    off.start(loop)
    try:
        yield off
    finally:
        off.close(timeout=5)


class Ran:
    """The labels of the jobs, in the order the worker ran them."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, label: str) -> str:
        with self.lock:
            self.order.append(label)
        return label


def test_a_newcomer_runs_next_after_ten_busy_clients(
    loop: EventLoop, run_loop: RunLoop, offloader: Offloader
) -> None:
    """Ten clients pipeline 64 jobs each; a new client's one job is the next to start."""
    ran = Ran()
    done: list[str] = []
    joined: dict[str, int] = {}

    def newcomer_arrives() -> None:
        # the jobs already handed to the pool are the only ones allowed to run first
        joined["started_or_running"] = len(done) + offloader.running
        offloader.submit(ran, "new", callback=finished, key="new")

    def finished(outcome: Outcome[str]) -> None:
        done.append(outcome.result())
        if len(done) == WARM_UP:
            newcomer_arrives()
        if "new" in done:
            loop.stop()

    for i in range(CLIENTS):
        for _ in range(PIPELINED):
            offloader.submit(ran, f"c{i}", callback=finished, key=f"c{i}")
    run_loop(loop, 30)

    position = ran.order.index("new")
    assert position <= joined["started_or_running"], (position, joined, ran.order)
    # the busy clients took turns meanwhile: none ran two jobs more than another
    counts = Counter(label for label in ran.order[:position])
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_busy_keys_take_turns_and_keyless_jobs_share_one_queue(
    loop: EventLoop, run_loop: RunLoop, offloader: Offloader
) -> None:
    ran = Ran()
    total = 3 * 4 + 4
    done: list[str] = []

    def finished(outcome: Outcome[str]) -> None:
        done.append(outcome.result())
        if len(done) == total:
            loop.stop()

    for key in "abc":
        for _ in range(4):
            offloader.submit(ran, key, callback=finished, key=key)
    for _ in range(4):
        offloader.submit(ran, "-", callback=finished)
    assert offloader.queued == total - 1
    run_loop(loop, 30)
    # the first job went straight to the free worker; then one turn per key, round after round
    assert ran.order == ["a"] + ["b", "c", "-", "a"] * 3 + ["b", "c", "-"]
    assert offloader.queued == 0


def test_keys_that_come_and_go_are_forgotten(
    loop: EventLoop, run_loop: RunLoop, offloader: Offloader
) -> None:
    """One short-lived client after another: what the queue remembers of them stays bounded."""
    ran = Ran()
    clients = 500
    done: list[str] = []

    def finished(outcome: Outcome[str]) -> None:
        done.append(outcome.result())
        if len(done) < clients:
            key = f"k{len(done)}"
            offloader.submit(ran, key, callback=finished, key=key)
        else:
            loop.stop()

    offloader.submit(ran, "k0", callback=finished, key="k0")
    run_loop(loop, 30)
    assert len(ran.order) == clients
    assert len(offloader._flows) <= 70, len(offloader._flows)


def test_a_client_that_left_gives_up_its_turns(
    loop: EventLoop, run_loop: RunLoop, offloader: Offloader
) -> None:
    ran = Ran()
    done: list[str] = []

    def finished(outcome: Outcome[str]) -> None:
        done.append(outcome.result())
        if len(done) == 4:
            loop.stop()

    gone = [offloader.submit(ran, "gone", callback=finished, key="gone") for _ in range(8)]
    for _ in range(4):
        offloader.submit(ran, "stays", callback=finished, key="stays")
    for job in gone:
        job.cancel()
    run_loop(loop, 30)
    # the first "gone" job was already in the pool: it runs, its result is dropped
    assert ran.order == ["gone", "stays", "stays", "stays", "stays"]
