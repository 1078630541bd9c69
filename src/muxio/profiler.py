"""Where the loop's time goes, by task and coroutine chain, cheaply enough for production.

A profiler thread that samples the loop thread's stack (`sys._current_frames()`)
takes the GIL from the loop on every sample: at 1,000 samples/s that cost
11 % per request.  So for CPU time (`clock="cpu"`, the default) the loop
thread samples itself, in a SIGPROF handler driven by `ITIMER_PROF`: no
second thread, no GIL handoff, and the handler is handed the very frame
the loop is in.  It does the least it can: it either adds to the idle
count (the loop is in its poller: `_busy_since` is 0) or walks the frames
up to the loop's own and adds to that chain's count.  Names are made from
the code objects once the profile ends.

`ITIMER_PROF` ticks on the process's CPU time, so an idle loop is not
woken, and the kernel delivers it at most once per scheduler tick (250/s on
a HZ=250 kernel, whatever `rate` asks): each tick counts one, and the counts
share out the loop thread's CPU time once the profile ends.  A C call that
holds the loop over several ticks is counted once (its ticks coalesce into
one handler call).

A CPU-time sample cannot see a loop blocked in `time.sleep` or a
synchronous socket call: that takes `clock="wall"`.  On the compiled build
a thread that never takes the GIL (`muxio._sampler`, sampler "c-thread")
ticks `rate` times a second, counts the ticks that find the loop in its
poller as idle without waking it, and sends the loop thread a SIGALRM for a
busy one, whose handler (C) records the frame it interrupted: 1,000
samples/s for 4 to 5 % CPU per request, where a signal per tick costs the
compiled loop 24.5 % (each idle tick runs it a whole iteration).
The pure build uses SIGALRM from `ITIMER_REAL`, each sample weighing the
wall time since the one before, its ticks at random, exponentially spaced
intervals (re-armed by the handler), because a tick ends the loop's poller
wait early: at a fixed period the loop's own timer wake-ups lock onto the
ticks, and the work that follows them is never sampled (a task doing 0.2 ms
of work per 0.2 ms sleep showed as 100 % idle).  Either way, a SIGALRM the
program already handles is left alone (a thread samples instead); one the
loop handles (`muxio serve` ignores SIGALRM through it) is set aside for
the profile and put back.

A profile's stacks are keyed by `id()` of each code object, not by the code
objects, whose hash is not cached, and a profile of given seconds is ended
by a thread's timer (`call_after`), not by one in the loop's heap.

The thread sampler (a loop outside the main thread, or a signal already
taken) sees the loop only when the loop lets go of the GIL: in its poller,
in I/O and blocking calls, or at the interpreter's switch interval (5 ms),
so it finds blocking calls but under-counts short bursts of CPU work, and
every sample takes the GIL from the loop.

This module reads the loop (its `_busy_since`, `_running`, `_thread_id`
and `_signal_handlers`) and never imports it: the loop imports it.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

CLOCKS = ("wall", "cpu")
IDLE = "(idle)"
"""The name idle time goes by in collapsed stacks and speedscope files: no one's frame."""
NO_TASK = "(no task)"
"""The root of a sample taken in a callback that is not a task's step (a protocol's I/O)."""
LOOP = "(loop)"
"""A busy sample in none of the code the loop runs: the loop's own (a timer heap, a poll)."""
_HEADER = "# muxio-profile"
_FRAME_NAME = re.compile(r"^(.*) \((.*):(\d+)\)$")
_SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

_active: dict[int, Sampler] = {}
"""id(loop) → its running sampler: one profile per loop at a time, one signal timer per process."""


class ProfileError(ValueError):
    """A file that is not a profile this module wrote (or one speedscope would read)."""


class Profile:
    """Sampled loop time: microseconds per stack (root first: the task), and idle apart.

    `stacks` maps a tuple of frame names (the task's name, then its
    coroutines and functions from the outermost down) to microseconds of
    loop time; `idle` is the time the loop spent waiting in its poller,
    which belongs to no stack.
    """

    def __init__(
        self,
        stacks: dict[tuple[str, ...], int],
        idle: int = 0,
        *,
        seconds: float = 0.0,
        clock: str = "wall",
        rate: float = 0.0,
        samples: int = 0,
        sampler: str = "?",
    ) -> None:
        self.stacks = stacks
        self.idle = idle
        self.seconds = seconds
        self.clock = clock
        self.rate = rate
        """Samples asked for per second."""
        self.samples = samples
        """Samples taken (the kernel may deliver fewer than asked: see the module doc)."""
        self.sampler = sampler
        """"signal" (the loop thread samples itself) or "thread"."""

    @property
    def busy(self) -> int:
        """Microseconds the loop spent running something."""
        return sum(self.stacks.values())

    @property
    def idle_share(self) -> float:
        total = self.busy + self.idle
        return self.idle / total if total else 0.0

    def share(self, frame: str) -> float:
        """The share of busy time spent in a stack with a frame containing `frame`."""
        busy = self.busy
        hit = sum(w for stack, w in self.stacks.items() if any(frame in f for f in stack))
        return hit / busy if busy else 0.0

    def top(self, n: int = 10) -> list[tuple[str, float, float]]:
        """The sites holding the loop most: (frame, own share, total share) of busy time.

        A site's own share counts the samples it was the innermost frame of
        (the task's name when no Python frame of it ran); its total share,
        every sample it was in.
        """
        busy = self.busy
        if not busy:
            return []
        own: dict[str, int] = {}
        total: dict[str, int] = {}
        for stack, weight in self.stacks.items():
            own[stack[-1]] = own.get(stack[-1], 0) + weight
            for frame in set(stack[1:]) or {stack[0]}:
                total[frame] = total.get(frame, 0) + weight
        ranked = sorted(own, key=lambda f: (-own[f], f))[:n]
        return [(f, own[f] / busy, total.get(f, own[f]) / busy) for f in ranked]

    def tasks(self, n: int = 10) -> list[tuple[str, float]]:
        """Roots (task names) by share of busy time."""
        busy = self.busy
        by: dict[str, int] = {}
        for stack, weight in self.stacks.items():
            by[stack[0]] = by.get(stack[0], 0) + weight
        ranked = sorted(by, key=lambda t: (-by[t], t))[:n]
        return [(t, by[t] / busy) for t in ranked] if busy else []

    # -- formats ---------------------------------------------------------------

    def collapsed(self) -> str:
        """Flame-graph lines, `frame;frame;frame count`, counts in microseconds; idle last."""
        lines = [
            f"{';'.join(stack)} {weight}"
            for stack, weight in sorted(self.stacks.items(), key=lambda kv: (-kv[1], kv[0]))
            if weight > 0
        ]
        if self.idle > 0:
            lines.append(f"{IDLE} {self.idle}")
        return "".join(line + "\n" for line in lines)

    def _header(self) -> str:
        return (
            f"{_HEADER} seconds={self.seconds:.3f} samples={self.samples} rate={self.rate:g} "
            f"sampler={self.sampler} clock={self.clock} unit=us\n"
        )

    def speedscope(self) -> dict[str, Any]:
        """speedscope's file format, one "sampled" profile; idle is a frame of its own."""
        frames: list[dict[str, Any]] = []
        index: dict[str, int] = {}

        def frame_index(name: str) -> int:
            i = index.get(name)
            if i is None:
                i = index[name] = len(frames)
                match = _FRAME_NAME.match(name)
                if match:
                    frames.append(
                        {"name": match[1], "file": match[2], "line": int(match[3])}
                    )
                else:
                    frames.append({"name": name})
            return i

        samples: list[list[int]] = []
        weights: list[int] = []
        for stack, weight in sorted(self.stacks.items(), key=lambda kv: (-kv[1], kv[0])):
            if weight > 0:
                samples.append([frame_index(f) for f in stack])
                weights.append(weight)
        if self.idle > 0:
            samples.append([frame_index(IDLE)])
            weights.append(self.idle)
        total = sum(weights)
        return {
            "$schema": _SPEEDSCOPE_SCHEMA,
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": f"muxio loop ({self.clock} time, {self.seconds:.1f} s)",
                    "unit": "microseconds",
                    "startValue": 0,
                    "endValue": total,
                    "samples": samples,
                    "weights": weights,
                }
            ],
            "name": "muxio loop profile",
            "activeProfileIndex": 0,
            "exporter": "muxio",
            "muxio": {
                "seconds": self.seconds,
                "samples": self.samples,
                "rate": self.rate,
                "sampler": self.sampler,
                "clock": self.clock,
            },
        }

    def write_speedscope(self, path: str | os.PathLike[str]) -> None:
        import json

        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.speedscope(), f, separators=(",", ":"))
            f.write("\n")

    def write_collapsed(self, path: str | os.PathLike[str]) -> None:
        """The collapsed lines after one `#` line of metadata (flame-graph tools skip it)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self._header())
            f.write(self.collapsed())

    def flamegraph_svg(self, title: str = "", width: int = 1200) -> str:
        """A flame graph, root at the bottom, as a self-contained SVG (no script, no fonts).

        Written here rather than through flamegraph.pl or inferno, which are
        Perl and Rust programs: a server's profile becomes a picture with
        nothing else installed.  Each box's tooltip gives its frame, its
        milliseconds and its share; idle time is a box of its own at the
        root, so the picture says how busy the loop was.
        """
        from html import escape

        tree: dict[str, Any] = {"value": 0, "children": {}}
        items = [*self.stacks.items(), *([((IDLE,), self.idle)] if self.idle > 0 else [])]
        for stack, weight in items:
            if weight <= 0:
                continue
            node = tree
            node["value"] += weight
            for frame in stack:
                node = node["children"].setdefault(frame, {"value": 0, "children": {}})
                node["value"] += weight
        total = tree["value"] or 1
        row, pad, top = 16, 10, 40
        boxes: list[tuple[int, float, float, str, int]] = []

        def place(node: dict[str, Any], depth: int, x: float) -> int:
            deepest = depth
            for name, child in sorted(node["children"].items()):
                w = child["value"] / total * (width - 2 * pad)
                if w >= 0.3:
                    boxes.append((depth, x, w, name, child["value"]))
                    deepest = max(deepest, place(child, depth + 1, x))
                x += w
            return deepest

        depth = place(tree, 0, float(pad))
        height = top + (depth + 1) * row + pad
        heading = title or f"muxio loop profile: {self.clock} time, {self.seconds:.1f} s"
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="#fdfaf4"/>',
            f'<text x="{width / 2:.0f}" y="22" text-anchor="middle" font-size="15">'
            f"{escape(heading)}</text>",
        ]
        for level, x, w, name, value in boxes:
            y = height - pad - (level + 1) * row
            if name == IDLE:
                fill = "#c8d4e0"
            else:
                h = sum(name.encode()) * 2654435761 % 2**32
                fill = f"rgb({205 + h % 50},{90 + (h >> 8) % 110},{40 + (h >> 16) % 50})"
            label = name if len(name) * 6.6 < w - 4 else name[: max(int((w - 4) / 6.6) - 2, 0)]
            tip = f"{name}: {value / 1000:.1f} ms, {value / total:.1%}"
            out.append(
                f'<g><title>{escape(tip)}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                f'height="{row - 1}" fill="{fill}" rx="2"/>'
                + (
                    f'<text x="{x + 3:.1f}" y="{y + row - 4}">{escape(label)}'
                    f'{".." if label != name else ""}</text>'
                    if len(label) >= 3
                    else ""
                )
                + "</g>"
            )
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def write_flamegraph(self, path: str | os.PathLike[str], title: str = "") -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.flamegraph_svg(title))

    def write(self, path: str | os.PathLike[str]) -> None:
        """speedscope JSON for a `.json` path, a flame graph for `.svg`, collapsed stacks else."""
        name = os.fspath(path)
        if name.endswith(".json"):
            self.write_speedscope(path)
        elif name.endswith(".svg"):
            self.write_flamegraph(path)
        else:
            self.write_collapsed(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Profile:
        """Read back what `write` wrote (or any collapsed-stacks or sampled speedscope file).

        OSError if it cannot be read; ProfileError if it is no profile.
        """
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if text.lstrip().startswith("{"):
            return cls._from_speedscope(text, os.fspath(path))
        return cls._from_collapsed(text, os.fspath(path))

    @classmethod
    def _from_collapsed(cls, text: str, where: str) -> Profile:
        stacks: dict[tuple[str, ...], int] = {}
        idle = 0
        meta: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith(_HEADER):
                meta = dict(p.split("=", 1) for p in line.split()[2:] if "=" in p)
                continue
            if not line.strip() or line.startswith("#"):
                continue
            stack_text, _, count = line.rpartition(" ")
            if not stack_text or not count.isdigit():
                raise ProfileError(
                    f"{where}: line {number} is not 'frame;frame count' (not a collapsed profile)"
                )
            if stack_text == IDLE:
                idle += int(count)
                continue
            stack = tuple(stack_text.split(";"))
            stacks[stack] = stacks.get(stack, 0) + int(count)
        if not stacks and not idle and not meta:
            raise ProfileError(f"{where}: no samples in it (not a collapsed profile)")
        try:
            return cls(
                stacks,
                idle,
                seconds=float(meta.get("seconds", 0)),
                clock=meta.get("clock", "?"),
                rate=float(meta.get("rate", 0)),
                samples=int(meta.get("samples", 0)),
                sampler=meta.get("sampler", "?"),
            )
        except ValueError:
            raise ProfileError(f"{where}: its {_HEADER} line is damaged") from None

    @classmethod
    def _from_speedscope(cls, text: str, where: str) -> Profile:
        import json

        try:
            doc = json.loads(text)
            names = []
            for frame in doc["shared"]["frames"]:
                name = str(frame["name"])
                if frame.get("file") is not None:
                    name = f"{name} ({frame['file']}:{frame.get('line', 0)})"
                names.append(name)
            profile = next(p for p in doc["profiles"] if p["type"] == "sampled")
            stacks: dict[tuple[str, ...], int] = {}
            idle = 0
            for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
                stack = tuple(names[i] for i in sample)
                if stack == (IDLE,):
                    idle += int(weight)
                elif stack:
                    stacks[stack] = stacks.get(stack, 0) + int(weight)
            meta = doc.get("muxio", {})
            return cls(
                stacks,
                idle,
                seconds=float(meta.get("seconds", 0)),
                clock=str(meta.get("clock", "?")),
                rate=float(meta.get("rate", 0)),
                samples=int(meta.get("samples", len(profile["samples"]))),
                sampler=str(meta.get("sampler", "?")),
            )
        except (ValueError, KeyError, TypeError, IndexError, StopIteration, AttributeError):
            raise ProfileError(
                f"{where}: not a sampled speedscope profile (JSON without shared.frames and a "
                "'sampled' profile)"
            ) from None

    def report(self, n: int = 15) -> str:
        """What `muxio profile-report` prints."""
        busy, idle = self.busy, self.idle
        total = busy + idle
        lines = [
            f"{self.clock} time profile: {total / 1e6:.3f} s sampled over {self.seconds:.1f} s "
            f"({self.samples} samples, {self.sampler} sampler)",
            f"idle (waiting in the poller): {self.idle_share:6.1%}   busy: "
            f"{busy / total if total else 0.0:6.1%}",
            "",
            "top sites (share of busy time):",
            f"  {'own':>6}  {'total':>6}  site",
        ]
        for frame, own, inclusive in self.top(n):
            lines.append(f"  {own:6.1%}  {inclusive:6.1%}  {frame}")
        lines += ["", "by task (share of busy time):"]
        for task, share in self.tasks(min(n, 5)):
            lines.append(f"  {share:6.1%}  {task}")
        return "\n".join(lines) + "\n"


class Sampler:
    """One profile being taken: the samples so far, keyed by (task, code objects)."""

    def __init__(self, loop: Any, rate: float = 1000.0, clock: str = "cpu") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
        if not 1 <= rate <= 10_000:
            raise ValueError(f"rate must be from 1 to 10000 samples per second, not {rate!r}")
        self.loop = loop
        self.rate = float(rate)
        self.clock = clock
        self.counts: dict[tuple[object, ...], float] = {}
        """(task name or None, id of each code object, outermost first) → seconds."""
        self.idle = 0.0
        self.samples = 0
        self.kind = "?"
        self._stop_ids = frozenset(id(code) for code in _loop_codes(loop))
        self._entry: FrameType | None = getattr(loop, "_entry_frame", None)
        """The frame running the loop: a stack ends below it (the compiled loop has no frames
        of its own to stop at, and the program's `main`, `asyncio.run`... are no one's time)."""
        self._codes: dict[int, CodeType] = {}
        """id() → code object of every frame in a sample: the keys of `counts` hold ids."""
        self._last = 0.0
        self._cpu_started = 0.0
        self._started = 0.0
        self._signal: tuple[int, int, object, object] | None = None
        """(signal, timer, the handler replaced, the loop's own handle suspended)."""
        self._gil_free: Any = None
        """`muxio._sampler` while its thread samples (the compiled build's wall clock)."""
        self._random = random.Random()
        self._thread_stop = threading.Event()
        self._thread_done = _thread.allocate_lock()

    # -- starting and stopping ---------------------------------------------------

    def start(self) -> None:
        if id(self.loop) in _active:
            raise RuntimeError("this loop is being profiled already")
        if self.clock == "cpu":
            signum, timer, handler = signal.SIGPROF, signal.ITIMER_PROF, self._on_prof
        else:
            signum, timer, handler = signal.SIGALRM, signal.ITIMER_REAL, self._on_alarm
        self._started = time.monotonic()
        if self._signal_is_ours(signum, timer):
            gil_free = _gil_free_sampler(self.loop) if self.clock == "wall" else None
            self._gil_free = gil_free
            self.kind = "signal" if gil_free is None else "c-thread"
            self._cpu_started = time.thread_time()
            self._last = time.monotonic()
            if gil_free is not None:
                handler = gil_free.on_signal
            previous = signal.signal(signum, handler)
            signal.siginterrupt(signum, False)
            suspended = self.loop._signal_handlers.pop(signum, None)
            self._signal = (signum, timer, previous, suspended)
            interval = 1.0 / self.rate
            if gil_free is not None:
                try:
                    gil_free.start(
                        self.loop, self.rate, signum, threading.get_ident(),
                        self.counts, self._codes, self._stop_ids, _OWN_IDS, _task_of,
                        self._entry,
                    )
                except BaseException:
                    self._restore_signal()
                    raise
            elif self.clock == "cpu":
                signal.setitimer(timer, interval, interval)
            else:
                signal.setitimer(timer, self._next_alarm())
        else:
            self.kind = "thread"
            self.clock = "wall"
            self._last = time.monotonic()
            self._thread_done.acquire()
            _thread.start_new_thread(self._thread_main, ())
        _active[id(self.loop)] = self

    def _signal_is_ours(self, signum: int, timer: int) -> bool:
        """The signal can be taken: main thread, no timer armed, no handler but the loop's own."""
        if threading.current_thread() is not threading.main_thread():
            return False
        if self.loop._thread_id not in (None, threading.main_thread().ident):
            return False
        if signal.getitimer(timer) != (0.0, 0.0):
            return False
        handler = signal.getsignal(signum)
        return handler in (signal.SIG_DFL, signal.SIG_IGN) or (
            signum in self.loop._signal_handlers
        )

    def stop(self) -> Profile:
        """End the sampling (from the loop's thread) and name what was sampled."""
        if _active.get(id(self.loop)) is self:
            del _active[id(self.loop)]
        if self._signal is not None:
            if self._gil_free is not None:
                self.samples, self.idle = self._gil_free.stop()
            self._restore_signal()
        elif self.kind == "thread":
            self._thread_stop.set()
            if self._thread_done.acquire(timeout=5):
                self._thread_done.release()
        return self._resolve(time.monotonic() - self._started)

    def _restore_signal(self) -> None:
        assert self._signal is not None
        signum, timer, previous, suspended = self._signal
        self._signal = None  # first: a tick handled from here on does not re-arm
        if self._gil_free is None:
            signal.setitimer(timer, 0.0)
        signal.signal(signum, signal.SIG_IGN)  # drops a tick already pending
        signal.signal(signum, previous)  # type: ignore[arg-type]
        if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.siginterrupt(signum, False)
        if suspended is not None:
            self.loop._signal_handlers[signum] = suspended

    # -- taking samples ----------------------------------------------------------

    def _next_alarm(self) -> float:
        """A random wait (exponential: the ticks a Poisson process), so they never phase-lock.

        A tick ends the loop's poller wait; with ticks at a fixed period, a
        loop woken by its own timers soon wakes on the ticks instead, and
        whatever it runs after waking always falls between two ticks: a task
        doing 0.2 ms of work per 0.2 ms sleep was sampled as 100 % idle.
        Memoryless ticks see every state in proportion to its time however
        the loop reacts to them.
        """
        return max(self._random.expovariate(self.rate), 2e-5)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            signal.setitimer(signal.ITIMER_REAL, self._next_alarm())
        self._on_signal(signum, frame)

    def _on_prof(self, signum: int, frame: FrameType | None) -> None:
        """One tick of CPU time: a count, made into seconds once the profile ends.

        Counted, not weighed by the CPU time since the tick before: on a
        loaded machine the kernel delivers ticks unevenly, and weights that
        vary with the scheduling rather than with the code widen the error
        (up to 7 points on a 60 % share in 500 samples, against 2).
        """
        self.samples += 1
        if not self.loop._busy_since:
            self.idle += 1.0
            return
        self._record(frame, 1.0)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        weight = now - self._last
        self._last = now
        self.samples += 1
        if not self.loop._busy_since:
            self.idle += weight
            return
        self._record(frame, weight)

    def _record(self, frame: FrameType | None, weight: float) -> None:
        """Add `weight` to the stack `frame` is in, keyed by `id()` of each code object.

        Not by the code objects: a code object's hash is not cached (it
        hashes its name, bytecode and constants each time), and keyed by them
        a sample 16 frames deep cost 12.7 µs, most of the handler's time.
        """
        stop = self._stop_ids
        codes = self._codes
        entry = self._entry
        key: list[object] = [_task_of(self.loop._running.now)]
        while frame is not None and id(frame.f_code) in _OWN_IDS:
            frame = frame.f_back  # a tick that came while the handler ran: the loop's frame
        while frame is not None and frame is not entry:
            code = frame.f_code
            ident = id(code)
            if ident in stop:
                break
            if ident not in codes:
                codes[ident] = code  # kept alive, so its id names it to the end
            key.append(ident)
            frame = frame.f_back
        counts = self.counts
        stack = tuple(key)
        counts[stack] = counts.get(stack, 0.0) + weight

    def _thread_main(self) -> None:
        try:
            interval = 1.0 / self.rate
            loop = self.loop
            wait = self._thread_stop.wait
            last = time.monotonic()
            while not wait(interval):
                now = time.monotonic()
                weight, last = now - last, now
                self.samples += 1
                thread_id = loop._thread_id
                if not loop._busy_since or thread_id is None:
                    self.idle += weight
                    continue
                self._record(sys._current_frames().get(thread_id), weight)
        finally:
            self._thread_done.release()

    # -- naming ------------------------------------------------------------------

    def _resolve(self, seconds: float) -> Profile:
        scale = 1.0
        if self.clock == "cpu" and self.kind == "signal" and self.samples:
            scale = (time.thread_time() - self._cpu_started) / self.samples
        names: dict[object, str] = {}
        stacks: dict[tuple[str, ...], int] = {}
        for key, weight in self.counts.items():
            root = key[0]
            stack = [root] if isinstance(root, str) else [NO_TASK if len(key) > 1 else LOOP]
            for ident in reversed(key[1:]):
                name = names.get(ident)
                if name is None:
                    name = names[ident] = _code_name(self._codes[ident])  # type: ignore[index]
                stack.append(name)
            frames = tuple(stack)
            stacks[frames] = stacks.get(frames, 0) + round(weight * scale * 1e6)
        return Profile(
            stacks,
            round(self.idle * scale * 1e6),
            seconds=seconds,
            clock=self.clock,
            rate=self.rate,
            samples=self.samples,
            sampler=self.kind,
        )


def _gil_free_sampler(loop: Any) -> Any:
    """`muxio._sampler` where it runs compiled and can read `loop`'s C fields, else None.

    Imported late: the compiled module takes the loop's C type when imported.
    """
    loop_module = sys.modules.get("muxio.loop")
    if loop_module is None or not isinstance(loop, loop_module._LoopCore):
        return None
    try:
        from . import _sampler
    except ImportError:
        return None
    return _sampler if _sampler.AVAILABLE else None


def call_after(loop: Any, seconds: float, callback: Callable[[], object]) -> Callable[[], None]:
    """Run `callback` on `loop` after `seconds`, timed by a thread; returns what cancels it.

    Not `loop.call_later`: on a server with no timer of its own, one timer
    in the heap makes every poller wait a timed one, a kernel timer armed
    per wait.  Paired runs of `benchmarks/profiler_overhead.py` put that at
    1 to 5.5 % CPU per request on this kind of virtual machine (the user-space
    instructions unchanged), and a profile should cost only its samples.
    """
    cancelled = threading.Event()

    def wait() -> None:
        if not cancelled.wait(seconds):
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_unless, cancelled, callback)

    threading.Thread(target=wait, name="muxio-profile-timer", daemon=True).start()
    return cancelled.set


def _unless(cancelled: threading.Event, callback: Callable[[], object]) -> None:
    if not cancelled.is_set():
        callback()


def _task_of(running: object) -> str | None:
    """The task name of what the loop runs; asyncio's `Task-N` names are one name, `Task-N`.

    Every request's task has a fresh default name: kept apart, a server's
    flame graph would have a root per request.
    """
    callback = getattr(running, "_callback", running)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        name = task.get_name()
        return "Task-N" if name.startswith("Task-") and name[5:].isdigit() else name
    return None


def _loop_codes(loop: Any) -> frozenset[CodeType]:
    """The loop's own frames: a stack is cut where the loop calls into what it runs."""
    codes = set()
    for cls in type(loop).__mro__:
        for name in ("_run_once", "_run_timed", "_run_io_timed", "run_forever"):
            code = getattr(cls.__dict__.get(name), "__code__", None)
            if isinstance(code, CodeType):
                codes.add(code)
    handle_run = getattr(asyncio.Handle._run, "__code__", None)
    if isinstance(handle_run, CodeType):
        codes.add(handle_run)
    return frozenset(codes)


_path_prefixes: list[str] = []


def _short_path(filename: str) -> str:
    """A file relative to the longest `sys.path` entry holding it (as a traceback reader wants)."""
    if not _path_prefixes:
        entries = {os.path.abspath(p or os.curdir) for p in sys.path}
        _path_prefixes.extend(sorted((p.rstrip(os.sep) + os.sep for p in entries), key=len,
                                     reverse=True))
    for prefix in _path_prefixes:
        if filename.startswith(prefix):
            return filename[len(prefix):]
    return filename


def _code_name(code: object) -> str:
    if not isinstance(code, CodeType):
        return str(code)
    name = getattr(code, "co_qualname", code.co_name)
    text = f"{name} ({_short_path(code.co_filename)}:{code.co_firstlineno})"
    return text.replace(";", ":").replace("\n", " ")


_OWN_IDS = frozenset(
    id(code)
    for code in (
        Sampler._on_signal.__code__,
        Sampler._on_prof.__code__,
        Sampler._on_alarm.__code__,
        Sampler._next_alarm.__code__,
        Sampler._record.__code__,
        _task_of.__code__,
    )
)


def start(loop: Any, rate: float = 1000.0, clock: str = "cpu") -> Sampler:
    """Begin sampling `loop`; `stop()` on the returned sampler ends it with the `Profile`."""
    sampler = Sampler(loop, rate, clock)
    sampler.start()
    return sampler


async def profile(loop: Any, seconds: float, rate: float = 1000.0, clock: str = "cpu") -> Profile:
    """Sample `loop` for `seconds` and return the profile (`EventLoop.profile`)."""
    if not seconds > 0:
        raise ValueError(f"seconds must be more than 0, not {seconds!r}")
    sampler = start(loop, rate, clock)
    done = loop.create_future()
    cancel = call_after(loop, seconds, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        cancel()
        result = sampler.stop()
    return result


__all__ = ["CLOCKS", "IDLE", "Profile", "ProfileError", "Sampler", "profile", "start"]
