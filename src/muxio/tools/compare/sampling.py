"""What a server costs over the measured window: CPU seconds and resident memory.

The number compare leads with is the server's CPU time per request, read from
the OS for the server's whole process tree (workers, offload pools) over
exactly the load generator's measured window.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from muxio.tools.bench import BenchHooks, Progress


class ProcessTree:
    """CPU seconds and resident memory of a process and its descendants.

    psutil when installed; otherwise /proc; otherwise None, reported as n/a.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ps: Any = None
        try:
            import psutil

            self._ps = psutil.Process(pid)
        except ImportError:
            pass
        except Exception:
            self._ps = None
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def _pids(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError, ValueError):
                    todo += [int(c) for c in task.read_text().split()]
        return pids

    def cpu_seconds(self) -> float | None:
        if self._ps is not None:
            try:
                t = self._ps.cpu_times()
                total = float(t.user + t.system + t.children_user + t.children_system)
                for child in self._ps.children(recursive=True):
                    with contextlib.suppress(Exception):
                        ct = child.cpu_times()
                        total += ct.user + ct.system
                return total
            except Exception:
                return None
        total_ticks = 0
        try:
            for i, pid in enumerate(self._pids()):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                # utime, stime; cutime and cstime (reaped children) only for the root.
                total_ticks += int(fields[11]) + int(fields[12])
                if i == 0:
                    total_ticks += int(fields[13]) + int(fields[14])
        except (OSError, ValueError, IndexError):
            return None
        return total_ticks / self._ticks

    def rss_bytes(self) -> int | None:
        if self._ps is not None:
            try:
                total = int(self._ps.memory_info().rss)
                for child in self._ps.children(recursive=True):
                    with contextlib.suppress(Exception):
                        total += int(child.memory_info().rss)
                return total
            except Exception:
                return None
        total = 0
        try:
            for pid in self._pids():
                total += self._status_kib(pid, "VmRSS") * 1024
        except (OSError, ValueError):
            return None
        return total

    def peak_rss_bytes(self) -> int | None:
        """The kernel's own high-water mark, which catches peaks between samples."""
        try:
            return self._status_kib(self.pid, "VmHWM") * 1024
        except (OSError, ValueError):
            return None

    @staticmethod
    def _status_kib(pid: int, key: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise ValueError(key)


class Sampler(BenchHooks):
    """Reads the server's tree at the edges of the measured window, its RSS at each tick."""

    def __init__(self, tree: ProcessTree) -> None:
        self.tree = tree
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self.peak_rss = 0

    def _rss(self) -> None:
        rss = self.tree.rss_bytes()
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)

    def window_start(self) -> None:
        self.cpu_start = self.tree.cpu_seconds()
        self._rss()

    def tick(self, progress: Progress) -> None:
        if progress.phase == "measure":
            self._rss()

    def window_end(self) -> None:
        self.cpu_end = self.tree.cpu_seconds()
        self._rss()
        hwm = self.tree.peak_rss_bytes()
        if hwm is not None:
            self.peak_rss = max(self.peak_rss, hwm)

    @property
    def cpu(self) -> float | None:
        if self.cpu_start is None or self.cpu_end is None:
            return None
        return self.cpu_end - self.cpu_start


def cpu_source() -> str:
    """Where CPU times come from here, for the report."""
    if importlib.util.find_spec("psutil") is not None:
        return "psutil"
    return "/proc" if Path("/proc/self/stat").exists() else "unavailable"
