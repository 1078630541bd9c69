"""An HDR-style log-linear histogram in a flat list: what `muxio bench` and the loop record into.

Laid out like HdrHistogram with 128 sub-buckets per power of two: a value
of ``b`` bits lands in slot ``((b - 8) << 7) + (value >> (b - 8))``, so
every slot is at most 1/128 (0.8 %) wide and values under 256 are exact.
A recorder keeps ``[0] * SLOTS`` and inlines `slot_of` (one ``bit_length``,
two shifts and one index op per value): a bench client that records each
reply and a loop that records each iteration must both cost less than what
they measure, which rules out a dict, ``math.log`` or the `hdrhistogram`
package (``benchmarks/histogram_cost.py`` has the numbers).  What crosses a
pipe or goes into a snapshot is the `sparse` form, non-zero slots only.

This module imports nothing of muxio's: the bench tools and the loop both
sit above it.
"""

from __future__ import annotations

import math

SUB_BITS = 7
SLOTS = 64 << SUB_BITS
"""Enough slots for any 64-bit count (nanoseconds, in every caller so far)."""


def slot_of(ns: int) -> int:
    """The histogram slot of a value (nanoseconds); recorders inline this."""
    e = ns.bit_length() - (SUB_BITS + 1)
    return ((e << SUB_BITS) + (ns >> e)) if e > 0 else max(ns, 0)


def slot_range(slot: int) -> tuple[int, int]:
    """The values [low, high) that land in `slot`."""
    if slot < 2 << SUB_BITS:
        return slot, slot + 1
    e = (slot >> SUB_BITS) - 1
    m = slot - (e << SUB_BITS)
    return m << e, (m + 1) << e


def merge(into: dict[int, int], counts: dict[int, int]) -> None:
    """Add the sparse `counts` into `into`: workers' histograms, or snapshots, summed."""
    for slot, n in counts.items():
        into[slot] = into.get(slot, 0) + n


def sparse(counts: list[int]) -> dict[int, int]:
    """The non-zero slots of a flat histogram: what crosses a pipe or goes into a snapshot."""
    return {i: n for i, n in enumerate(counts) if n}


def subtract(later: dict[int, int], earlier: dict[int, int]) -> dict[int, int]:
    """What was recorded between two sparse snapshots of one histogram."""
    return {s: d for s, n in later.items() if (d := n - earlier.get(s, 0)) > 0}


def percentile(hist: dict[int, int], total: int, q: float) -> float:
    """The value at quantile `q`: the middle of the slot holding that rank (0 if empty)."""
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(total * q))
    seen = 0
    for slot in sorted(hist):
        seen += hist[slot]
        if seen >= rank:
            low, high = slot_range(slot)
            return (low + high - 1) / 2
    return 0.0


def quantile_ms(hist: dict[int, int], q: float, highest_ns: float) -> float:
    """`percentile` in ms, at most `highest_ns`: a slot's middle may lie past the largest value."""
    return round(min(percentile(hist, sum(hist.values()), q), highest_ns) / 1e6, 3)
