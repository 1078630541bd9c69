"""What recording one latency costs the bench worker, per histogram design.

Why the bench keeps its own HDR-style histogram (muxio/tools/bench/metrics.py)
instead of the `hdrhistogram` package: the worker records one value per reply
in pure Python, and a client must stay cheaper per request than the servers it
measures.  Also checks that each design lands the percentiles near the exact
ones.  `pip install hdrhistogram` to include it; without it, it is skipped.

    python benchmarks/histogram_cost.py [--values 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import math
import random
import timeit
from collections.abc import Callable
from typing import Any

from muxio.histogram import SLOTS, SUB_BITS, percentile, slot_of, sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    values = [int(rng.lognormvariate(math.log(300_000), 0.8)) for _ in range(args.values)]

    def bits_list() -> Any:
        counts = [0] * SLOTS
        sub = SUB_BITS
        for dt in values:
            e = dt.bit_length() - sub - 1
            counts[((e << sub) + (dt >> e)) if e > 0 else dt] += 1
        return counts

    def log_dict() -> Any:
        hist: dict[int, int] = {}
        log = math.log
        for dt in values:
            b = int(log(dt) * 100.0)
            hist[b] = hist.get(b, 0) + 1
        return hist

    def log_list() -> Any:
        counts = [0] * 2600
        log = math.log
        for dt in values:
            counts[int(log(dt) * 100.0)] += 1
        return counts

    designs: list[tuple[str, Callable[[], Any]]] = [
        ("bit-length slot + list (muxio bench)", bits_list),
        ("log() slot + dict (bench before)", log_dict),
        ("log() slot + list", log_list),
    ]
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        print("hdrhistogram not installed: skipped (pip install hdrhistogram)")
        HdrHistogram = None
    if HdrHistogram is not None:

        def hdr() -> Any:
            h = HdrHistogram(1, 3_600_000_000_000, 2)
            record = h.record_value
            for dt in values:
                record(dt)
            return h

        designs.append(("hdrhistogram.record_value", hdr))

    for name, fn in designs:
        best = min(timeit.repeat(fn, number=1, repeat=args.repeat))
        print(f"{name:40s} {best / len(values) * 1e9:8.1f} ns per value")

    ordered = sorted(values)
    hist = sparse(bits_list())
    assert all(slot_of(v) in hist for v in values[:100])
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = ordered[math.ceil(q * len(values)) - 1]
        ours = percentile(hist, len(values), q)
        line = f"p{q * 100:g}: exact {exact / 1e6:.4f} ms, muxio {ours / exact - 1:+.2%}"
        if HdrHistogram is not None:
            h = hdr()
            line += f", hdrhistogram {h.get_value_at_percentile(q * 100) / exact - 1:+.2%}"
        print(line)


if __name__ == "__main__":
    main()
