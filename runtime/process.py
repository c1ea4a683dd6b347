"""Process settings for a long-running scheduler (the service and the benchmarks call this).

CPython's cyclic garbage collector runs a generation-0 pass every 700 net allocations and,
every so often, a full pass over every tracked object. A scheduler that holds tens of thousands
of prefix and program records pays a full pass as a pause of tens of milliseconds in the middle
of a scheduling step. Measured on `bench/scheduler_overhead.py` (1,000 programs): decision p99
1,370 us with the default thresholds, 537 us with these. The scheduler's records do not form
reference cycles that need prompt collection, so collecting less often loses nothing.

Never applied on import: a library must not change its host process's collector.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 100


def tune_gc() -> tuple[int, int, int]:
    """Collect less often, and move what exists now out of the collector's sight. Returns the
    previous thresholds."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    return previous
