"""Instructions per loop operation, counted by callgrind, for asyncio, uvloop and muxio.

The echo benchmarks mix the loop with the kernel and the transports; these
four operations are the loop alone, the rows issue 17 compares loops on:

  call_soon   one `call_soon` whose callback runs in the next iteration
  sleep0      1,000 tasks that `await asyncio.sleep(0)`, gathered (per task)
  timer       `call_later(1000, cb)` then `cancel()` (per timer; the loop
              runs one iteration per 100 timers, so its cleanup is counted)
  future      `create_future()` + `call_soon(fut.set_result, None)` + `await`

Each loop runs in a child process under `valgrind --tool=callgrind`, as in
callgrind_per_request.py (whose control helpers this reuses): the child
warms each operation up, then for n and 2n operations says "ready", blocks
on stdin while the driver zeroes the counters (`callgrind_control -z`), runs
the n operations, says "done" and blocks again while the driver dumps
(`callgrind_control -d`).  The per-operation figure is (I(2n) - I(n)) / n:
the handshake, the coroutine around the operations and the control command
itself cost the same in both dumps and cancel out.

`muxio-compiled` and `muxio-pure` are the installed package's two builds
(`MUXIO_PURE=0`/`1` in the child, which checks it runs the one named).
`--compiled DIR` adds a `muxio-compiled` loop: muxio imported with DIR first
on PYTHONPATH (a scratch tree where the modules were compiled in place); the
child prints which `muxio/loop` file it runs so a stale path shows.

    python benchmarks/callgrind_loop_ops.py [--loops asyncio,uvloop,muxio,muxio-compiled,muxio-pure]
        [--ops call_soon,sleep0,timer,future] [-n 10000] [--compiled DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

OPS = ("call_soon", "sleep0", "timer", "future")
LABELS = {
    "call_soon": "one `call_soon` → next iteration",
    "sleep0": "1,000 tasks `sleep(0)` + gather, per task",
    "timer": "`call_later` + `cancel`, per timer",
    "future": "`create_future` + `call_soon(set_result)` + await",
}
LOOPS = ("asyncio", "uvloop", "muxio", "muxio-compiled", "muxio-pure")
_BUILD_ENV = {
    "muxio-compiled": {"MUXIO_PURE": "0", "MUXIO_EXPECT_BUILD": "compiled"},
    "muxio-pure": {"MUXIO_PURE": "1", "MUXIO_EXPECT_BUILD": "pure"},
}
_TASKS_PER_GATHER = 1000
_TIMERS_PER_ITERATION = 100


# --- the operations (run in the child) ------------------------------------------------------


async def op_call_soon(loop: asyncio.AbstractEventLoop, n: int) -> None:
    done = loop.create_future()
    left = n

    def step() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    await done


async def _sleeper() -> None:
    await asyncio.sleep(0)


async def op_sleep0(loop: asyncio.AbstractEventLoop, n: int) -> None:
    for _ in range(n // _TASKS_PER_GATHER):
        await asyncio.gather(*[loop.create_task(_sleeper()) for _ in range(_TASKS_PER_GATHER)])


def _never() -> None:
    raise AssertionError("a cancelled timer ran")


async def op_timer(loop: asyncio.AbstractEventLoop, n: int) -> None:
    call_later = loop.call_later
    for _ in range(n // _TIMERS_PER_ITERATION):
        for _ in range(_TIMERS_PER_ITERATION):
            call_later(1000.0, _never).cancel()
        await asyncio.sleep(0)


async def op_future(loop: asyncio.AbstractEventLoop, n: int) -> None:
    create_future = loop.create_future
    call_soon = loop.call_soon
    for _ in range(n):
        fut = create_future()
        call_soon(fut.set_result, None)
        await fut


OP_FUNCS: dict[str, Callable[[asyncio.AbstractEventLoop, int], Awaitable[None]]] = {
    "call_soon": op_call_soon,
    "sleep0": op_sleep0,
    "timer": op_timer,
    "future": op_future,
}


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import muxio

    return muxio.new_event_loop(slow_callback_ms=None)


def child(name: str, ops: list[str], n: int) -> int:
    import gc

    loop = new_loop(name)
    if name == "muxio":
        from muxio import _build

        if (wrong := _build.expectation_error()) is not None:
            print(wrong, file=sys.stderr)
            return 1
    mod = sys.modules.get(type(loop).__module__)
    print(
        f"loop {type(loop).__module__}.{type(loop).__qualname__} from "
        f"{getattr(mod, '__file__', '?')}",
        file=sys.stderr,
        flush=True,
    )

    async def main() -> None:
        for op in ops:
            func = OP_FUNCS[op]
            await func(loop, n)
            for size in (n, 2 * n):
                gc.collect()
                print(f"ready {op} {size}", flush=True)
                sys.stdin.readline()
                await func(loop, size)
                print("done", flush=True)
                sys.stdin.readline()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


# --- the driver -----------------------------------------------------------------------------


def _expect(stream: IO[str], prefix: str) -> str:
    line = stream.readline()
    if not line.startswith(prefix):
        raise RuntimeError(f"child said {line!r}, expected {prefix!r}")
    return line


def measure(name: str, ops: list[str], n: int, pythonpath: str | None) -> dict[str, Any]:
    """Per-op instructions of one loop; {'ops': {op: Ir/op}, 'file': ..., 'raw': ...}."""
    from callgrind_per_request import _newest_dump, callgrind_control, read_instructions

    out_dir = Path(tempfile.mkdtemp(prefix="muxio-loopops-"))
    env = {**os.environ, **_BUILD_ENV.get(name, {})}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    loop_name = "muxio" if name.startswith("muxio") else name
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_dir}/cg.%p",
        sys.executable,
        __file__,
        "--child",
        loop_name,
        "--ops",
        ",".join(ops),
        "-n",
        str(n),
    ]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    result: dict[str, Any] = {"ops": {}, "raw": {}}
    try:
        for op in ops:
            counts = []
            for size in (n, 2 * n):
                _expect(proc.stdout, f"ready {op} {size}")
                before = set(out_dir.glob("cg.*"))
                callgrind_control("-z", proc.pid)
                proc.stdin.write("go\n")
                proc.stdin.flush()
                _expect(proc.stdout, "done")
                callgrind_control("-d", proc.pid)
                counts.append(read_instructions(_newest_dump(out_dir, proc.pid, before))[0])
                proc.stdin.write("next\n")
                proc.stdin.flush()
            result["raw"][op] = counts
            result["ops"][op] = round((counts[1] - counts[0]) / n, 1)
            print(
                f"{name} {op}: {result['ops'][op]:,.1f} Ir/op {counts}", file=sys.stderr, flush=True
            )
        proc.stdin.close()
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"{name} child exited {proc.returncode}: {proc.stderr.read()}")
        err = proc.stderr.read()
        result["file"] = next(
            (ln.split(" from ", 1)[1] for ln in err.splitlines() if ln.startswith("loop ")), "?"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def render(results: dict[str, dict[str, Any]], ops: list[str], n: int) -> str:
    names = list(results)
    lines = [
        f"Python {sys.version.split()[0]}; callgrind Ir per operation, (I(2n) - I(n)) / n, "
        f"n = {n}.",
        "",
        "| operation | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for op in ops:
        cells = []
        for name in names:
            v = results[name]["ops"].get(op)
            ratios = []
            for ref in ("asyncio", "uvloop"):
                r = results.get(ref, {}).get("ops", {}).get(op)
                if r and name != ref and v is not None:
                    ratios.append(f"{v / r:.2f}x {ref}")
            cells.append(
                "—" if v is None else f"{v:,.0f}" + (f" ({', '.join(ratios)})" if ratios else "")
            )
        lines.append(f"| {LABELS[op]} | " + " | ".join(cells) + " |")
    for name in names:
        lines.append(f"\n{name}: {results[name].get('file', '?')}")
    return "\n".join(lines) + "\n"


# Under callgrind a server runs ~50x slower, so each of its iterations would take longer than the
# loop's health floor (50 µs: iterations under it are only counted, not placed in a histogram slot)
# and take the slow path real runs take only for long iterations. The floor is raised in proportion.
HEALTH_FLOOR_UNDER_CALLGRIND_US = "2500"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUXIO_HEALTH_FLOOR_US", HEALTH_FLOOR_UNDER_CALLGRIND_US)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loops", default=",".join(LOOPS), help="comma list (default %(default)s)")
    p.add_argument("--ops", default=",".join(OPS), help="comma list (default %(default)s)")
    p.add_argument("-n", type=int, default=10000, help="operations per dump (default 10000)")
    p.add_argument("--compiled", metavar="DIR", help="add muxio-compiled from DIR (PYTHONPATH)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--child", metavar="LOOP", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or args.n < _TASKS_PER_GATHER or args.n % _TASKS_PER_GATHER:
        p.error(f"--ops from {', '.join(OPS)}; -n a multiple of {_TASKS_PER_GATHER}")
    if args.child:
        return child(args.child, ops, args.n)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed; apt-get install -y valgrind")
    loops: list[tuple[str, str | None]] = [
        (name.strip(), None) for name in args.loops.split(",") if name.strip()
    ]
    if any(name not in LOOPS for name, _ in loops):
        p.error(f"--loops from {', '.join(LOOPS)}")
    if args.compiled:
        loops.append(("muxio-compiled", str(Path(args.compiled).resolve())))
    results = {name: measure(name, ops, args.n, path) for name, path in loops}
    if args.json:
        print(json.dumps({"n": args.n, "results": results}, indent=2))
    else:
        print(render(results, ops, args.n), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
