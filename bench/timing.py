"""Timing shared by the benchmarks: functions called in turn within every run, so a noisy moment of a
shared machine hits each of them alike (the benchmarks compare against a baseline in the same run)."""

from __future__ import annotations

import time


def alternating(fns: list, runs: int, warmup: int) -> list[list[float]]:
    """Wall times in ms of each function, called in turn within every run after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - start) * 1000)
    return times
