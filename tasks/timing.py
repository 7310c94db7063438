"""Per-stage timings: where a photo's seconds go (the benchmarks read them)."""
from __future__ import annotations

import time


def lap(timings: dict, name: str, start: float) -> float:
    """Add the time since `start` to timings[name]; returns now, the start of the next lap."""
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - start
    return now
