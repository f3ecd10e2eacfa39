"""Small statistics for noisy machines: nearest-rank percentiles, medians, ratios, interleaved timing."""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np

INTERVAL_RESAMPLES = 2000  # bootstrap resamples behind every interval a goal is shown with
INTERVAL_SEED = 11  # the same resamples on every run, so an interval is reproducible from its samples


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least p% of samples at or below it."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def median(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ratio(value: float, floor: float) -> float:
    """To two decimals: for reading. A goal is judged by `goal_ratio`."""
    return round(value / floor, 2) if floor > 0 else float("inf")


def goal_ratio(value: float, floor: float) -> float:
    """A ratio that decides a goal, to three decimals: at two, 1.204 would read 1.2 and meet a goal of 1.2×."""
    return round(value / floor, 3) if floor > 0 else float("inf")


def nearest_rank_rows(values: np.ndarray, p: float) -> np.ndarray:
    """`percentile(row, p)` of each row of a 2-d array (every row as long)."""
    rank = max(1, math.ceil(p / 100.0 * values.shape[1])) - 1
    return np.partition(values, rank, axis=1)[:, rank]


def ratio_interval(ours: Sequence[float], floor: Sequence[float], p: float | None, level: float = 0.95,
                   resamples: int = INTERVAL_RESAMPLES, seed: int = INTERVAL_SEED) -> tuple[float, float]:
    """How far `percentile(ours, p) / percentile(floor, p)` (p None: `median(ours) / median(floor)`) could have
    moved by the luck of which rounds were timed: the central `level` of that ratio over `resamples` bootstrap
    resamples of the rounds, to three decimals.

    ours[i] and floor[i] were timed in the same round (one interleaved pass, or one round of starts), so a
    resample draws rounds, both samples of a round together: whatever slowed a whole round slows both sides
    of that round's pair in every resample, as it did in the run.
    """
    a, b = np.asarray(ours, dtype=float), np.asarray(floor, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or not len(a):
        raise ValueError("ratio_interval needs two equally long, non-empty series of samples, one pair per round")
    rounds = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    if p is None:
        ratios = np.median(a[rounds], axis=1) / np.median(b[rounds], axis=1)
    else:
        ratios = nearest_rank_rows(a[rounds], p) / nearest_rank_rows(b[rounds], p)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return round(float(low), 3), round(float(high), 3)


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of latencies given in seconds, reported in milliseconds."""
    return {
        "n": len(samples_s),
        "p50_ms": round(percentile(samples_s, 50) * 1e3, 3),
        "p99_ms": round(percentile(samples_s, 99) * 1e3, 3),
        "max_ms": round(max(samples_s) * 1e3, 3),
    }


def interleaved(calls: dict[str, Callable[[int], object]], repetitions: int, warmup: int = 10) -> dict[str, list[float]]:
    """Time each call `repetitions` times, rotating the order every round so a noisy neighbour hits all alike.

    `calls[name](i)` is run once per round, i = 0 … repetitions − 1 (warm-up rounds use indices past
    those, so a call that must not repeat an earlier request never does); returns seconds per call per name.
    """
    names = list(calls)
    for i in range(warmup):
        for name in names:
            calls[name](repetitions + i)
    samples: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for i in range(repetitions):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            begin = clock()
            call(i)
            samples[name].append(clock() - begin)
    return samples


class CpuShares:
    """Where the machine's CPU time went while each section of a run ran, from /proc/stat: the share the
    hypervisor gave to other guests although this VM had work (steal) and the share it was busy. A high steal
    share marks a section whose figures a neighbour disturbed, which a ratio against a floor measured in the
    same run does not always cancel (the floor and ours are not disturbed alike). No /proc/stat: nothing recorded."""

    def __init__(self, path: str = "/proc/stat"):
        self._path = path
        self._marks: list[tuple[str, tuple[int, ...]]] = []

    def _read(self) -> tuple[int, ...] | None:
        try:
            with open(self._path) as handle:
                fields = handle.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        return tuple(int(value) for value in fields[1:9])  # user nice system idle iowait irq softirq steal

    def mark(self, section: str) -> None:
        """`section` starts now (and the one before it ends)."""
        ticks = self._read()
        if ticks is not None:
            self._marks.append((section, ticks))

    def shares(self) -> dict[str, dict[str, float]]:
        """{section: {"steal_pct", "busy_pct"}} for every section ended by a later mark."""
        out = {}
        for (section, before), (_, after) in zip(self._marks, self._marks[1:]):
            delta = [b - a for a, b in zip(before, after)]
            total = sum(delta)
            if total <= 0:
                continue
            idle = delta[3] + delta[4]
            out[section] = {"steal_pct": round(100.0 * delta[7] / total, 1),
                            "busy_pct": round(100.0 * (total - idle - delta[7]) / total, 1)}
        return out
