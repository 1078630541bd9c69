"""Cost of one wait, muxio's thin pollers against the standard `selectors` module.

Opens N socket pairs, makes K of them readable, and times repeated waits
that each return those K ready descriptors (the data is never read, so every
wait sees the same readiness).  Each wait also dispatches every
ready event to a no-op callback, as a loop would, so the comparison includes
the per-event work each design leaves to its caller.  Prints microseconds per
wait.  This is the measurement behind the choice in docs/architecture.md to
sit on `select.*` directly rather than on `selectors`.

    python benchmarks/poller_overhead.py [--fds 1000] [--ready 100] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import time

from muxio.pollers import BACKENDS, READ

SELECTORS = {
    "epoll": getattr(selectors, "EpollSelector", None),
    "kqueue": getattr(selectors, "KqueueSelector", None),
    "devpoll": getattr(selectors, "DevpollSelector", None),
    "poll": getattr(selectors, "PollSelector", None),
    "select": selectors.SelectSelector,
}


def noop() -> None:
    pass


def measure(wait: object, rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            wait()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - start) / rounds)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fds", type=int, default=1000)
    ap.add_argument("--ready", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * args.fds + 64), hard))
    pairs = [socket.socketpair() for _ in range(args.fds)]
    for _a, b in pairs[: args.ready]:
        b.send(b"x")
    fds = [a.fileno() for a, _ in pairs]
    print(f"{args.fds} descriptors watched, {args.ready} ready; best of 5 x {args.rounds} waits")
    print(f"{'backend':8} {'muxio us/wait':>14} {'selectors us/wait':>18} {'ratio':>6}")
    for name, sel_cls in SELECTORS.items():
        cls = BACKENDS[name]
        if not cls.available() or sel_cls is None:
            continue
        if name == "select" and max(fds) >= 1024:
            print(f"{name:8} skipped: descriptors above FD_SETSIZE")
            continue
        poller = cls()
        readers = {}
        for fd in fds:
            poller.register(fd, READ)
            readers[fd] = noop

        def ours_wait(p=poller, bits=cls.READABLE, get=readers.get) -> None:
            for fd, ev in p.poll(0):
                if ev & bits:
                    get(fd)()

        ours = measure(ours_wait, args.rounds)
        assert len(poller.poll(0)) == args.ready
        poller.close()
        sel = sel_cls()
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ, noop)

        def theirs_wait(s=sel) -> None:
            for key, ev in s.select(0):
                if ev & selectors.EVENT_READ:
                    key.data()

        theirs = measure(theirs_wait, args.rounds)
        sel.close()
        print(f"{name:8} {ours * 1e6:14.1f} {theirs * 1e6:18.1f} {theirs / ours:6.2f}x")
    for a, b in pairs:
        a.close()
        b.close()


if __name__ == "__main__":
    main()
