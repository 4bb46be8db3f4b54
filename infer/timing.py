"""Latency measurement: warm-up, then the median of many timed runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LatencyStats", "measure"]


@dataclass(frozen=True)
class LatencyStats:
    """Latency of repeated runs, in milliseconds."""

    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float

    def to_json(self) -> dict[str, Any]:
        """Return the stats as JSON data."""
        return self.__dict__.copy()


def measure(fn: Callable[[], object], repeat: int, warmup: int) -> LatencyStats:
    """Return the latency of fn over repeat timed calls after warmup untimed ones."""
    if repeat < 1:
        raise ValueError(f"repeat: expected >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return LatencyStats(
        runs=repeat,
        median_ms=statistics.median(samples),
        p90_ms=p90,
        min_ms=ordered[0],
        mean_ms=statistics.fmean(samples),
    )
