"""What the loop profiler costs a server: CPU per request, profiler off against on.

`muxio serve` (the uppercase echo) gets the same fixed open-loop load in every
run (`muxio bench --rate`: the same requests at the same times, so a slower
server is not also a less loaded one), and its CPU time (utime + stime from
/proc) is divided by the requests it answered.  The modes, interleaved within
each repeat (every other one backwards) so a machine that gets busier hurts
them alike:

    off     no profile
    cpu     --profile-clock cpu: SIGPROF handled by the loop thread (the default)
    wall    --profile-clock wall: Poisson-spaced SIGALRM handled by the loop thread
    thread  the thread sampler the profiler falls back to (forced here by giving
            SIGPROF a handler before muxio starts, as a program using it would)

    python benchmarks/profiler_overhead.py [--repeat 6] [--duration 3]
        [--connections 20] [--rate 250] [--modes off,cpu,wall,thread] [--paired]

`--paired` serves each mode beside an unprofiled server at the same time on
the same CPU instead, and takes the ratio within each pair: the machine's
drift, which one run after another cannot cancel, hits both alike.

It prints each run, then per mode the median CPU per request and its ratio to
`off` (the median of the per-repeat ratios), and the samples/s the profile took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from muxio.tools.process import source_env, start_server

THREAD_WRAPPER = (
    "import signal, sys\n"
    "signal.signal(signal.SIGPROF, lambda *a: None)  # taken: the profiler uses a thread\n"
    "from muxio.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
WRITTEN = re.compile(r"profile written to .*: (\d+) samples over ([\d.]+) s")


def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of `pid`: schedstat has ns (/proc/PID/stat, 10 ms ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def _server(mode: str, workdir: str, tag: str = "") -> Any:
    serve = ["serve", "--host", "127.0.0.1", "--port", "0", "--slow-callback-ms", "100"]
    if mode != "off":
        clock = "wall" if mode == "wall" else "cpu"
        out = os.path.join(workdir, f"{mode}{tag}.json")
        serve += ["--profile", "3600", "--profile-out", out, "--profile-clock", clock]
    if mode == "thread":
        argv = [sys.executable, "-c", THREAD_WRAPPER, *serve]
    else:
        argv = [sys.executable, "-m", "muxio", *serve]
    server = start_server(argv, env=source_env(), name=f"muxio serve ({mode})", cpu=0)
    if mode != "off":
        server.wait_line("profiling the loop")
    return server


def _bench(server: Any, args: argparse.Namespace) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "muxio", "bench", "--host", server.host,
         "--port", str(server.port), "--connections", str(args.connections),
         "--rate", str(args.rate), "--duration", str(args.duration), "--warmup", "0",
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=source_env(),
    )


def _requests(bench: subprocess.Popen[str], mode: str, args: argparse.Namespace) -> int:
    out, err = bench.communicate(timeout=args.duration * 4 + 60)
    if bench.returncode != 0:
        raise SystemExit(f"bench failed ({mode}): {err.strip()[-300:]}")
    return int(json.loads(out)["requests"])


def _samples_per_second(server: Any, mode: str) -> float | None:
    server.proc.send_signal(signal.SIGTERM)
    if mode == "off":
        return None
    m = server.wait_line(WRITTEN)
    return int(m.group(1)) / float(m.group(2))


def run_once(mode: str, args: argparse.Namespace, workdir: str) -> tuple[float, float | None]:
    """(CPU µs per request, samples per second or None) for one server under the load."""
    server = _server(mode, workdir)
    try:
        before = cpu_seconds(server.pid)
        bench = _bench(server, args)
        requests = _requests(bench, mode, args)
        used = cpu_seconds(server.pid) - before
        rate = _samples_per_second(server, mode)
    finally:
        server.stop()
    return used / requests * 1e6, rate


def run_pair(
    mode: str, args: argparse.Namespace, workdir: str, first: bool
) -> tuple[float, float, float | None]:
    """`mode` and `off` served at once, on one CPU, under the same load at the same time.

    This machine's speed drifts by up to 2x over seconds, which no ordering
    of runs one after the other cancels; two servers sharing a CPU through
    the same seconds see the same drift.  (µs per request off, on, samples/s.)
    """
    order = [mode, "off"] if first else ["off", mode]
    servers = {m: _server(m, workdir, tag=f"-{i}") for i, m in enumerate(order)}
    try:
        before = {m: cpu_seconds(s.pid) for m, s in servers.items()}
        benches = {m: _bench(s, args) for m, s in servers.items()}
        requests = {m: _requests(b, m, args) for m, b in benches.items()}
        used = {m: cpu_seconds(s.pid) - before[m] for m, s in servers.items()}
        rate = _samples_per_second(servers[mode], mode)
        servers["off"].proc.send_signal(signal.SIGTERM)
    finally:
        for s in servers.values():
            s.stop()
    per = {m: used[m] / requests[m] * 1e6 for m in order}
    return per["off"], per[mode], rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s per connection")
    parser.add_argument("--modes", default="off,cpu,wall,thread")
    parser.add_argument(
        "--paired", action="store_true",
        help="serve each mode beside an unprofiled server at the same time, on one CPU, "
        "and take the ratio within each pair",
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.paired:
        paired(args, [m for m in modes if m != "off"])
        return
    per_request: dict[str, list[float]] = {m: [] for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="muxio-profiler-overhead-") as workdir:
        for repeat in range(args.repeat):
            # every other repeat backwards: a run's place in the repeat moved its cost by up
            # to 5 % (off then cpu measured cpu at 1.055, cpu then off at 0.992)
            for mode in modes if repeat % 2 == 0 else modes[::-1]:
                us, rate = run_once(mode, args, workdir)
                per_request[mode].append(us)
                if rate is not None:
                    rates[mode].append(rate)
                extra = f", {rate:.0f} samples/s" if rate is not None else ""
                print(f"repeat {repeat + 1} {mode:6}: {us:6.2f} µs CPU per request{extra}",
                      flush=True)
    print(f"\n{args.connections} connections x {args.rate:g} requests/s, {args.duration:g} s, "
          f"{args.repeat} repeats (medians):")
    base = per_request.get("off")
    for mode in modes:
        line = f"  {mode:6}  {statistics.median(per_request[mode]):6.2f} µs/request"
        if base and mode != "off":
            ratios = [on / off for on, off in zip(per_request[mode], base, strict=True)]
            line += f"  ratio {statistics.median(ratios):.3f} (runs: "
            line += ", ".join(f"{r:.3f}" for r in ratios) + ")"
        if rates[mode]:
            line += f"  {statistics.median(rates[mode]):.0f} samples/s"
        print(line)


def paired(args: argparse.Namespace, modes: list[str]) -> None:
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="muxio-profiler-overhead-") as workdir:
        for repeat in range(args.repeat):
            for mode in modes:
                off, on, rate = run_pair(mode, args, workdir, first=repeat % 2 == 0)
                ratios[mode].append(on / off)
                if rate is not None:
                    rates[mode].append(rate)
                print(f"repeat {repeat + 1} {mode:6}: {on:6.2f} µs CPU per request against "
                      f"{off:6.2f} off beside it: {on / off:.3f}, {rate or 0:.0f} samples/s",
                      flush=True)
    print(f"\n{args.connections} connections x {args.rate:g} requests/s per server, two servers "
          f"on one CPU at a time, {args.duration:g} s, {args.repeat} repeats (medians):")
    for mode in modes:
        line = f"  {mode:6}  ratio {statistics.median(ratios[mode]):.3f} (runs: "
        line += ", ".join(f"{r:.3f}" for r in ratios[mode]) + ")"
        if rates[mode]:
            line += f"  {statistics.median(rates[mode]):.0f} samples/s"
        print(line)


if __name__ == "__main__":
    main()
