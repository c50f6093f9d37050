"""Wall-time measurement shared by the benchmark scripts (imported, not run): the scripts run as
``python scripts/<name>.py``, which puts this folder on the import path."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn``, after one untimed warm-up
    call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
