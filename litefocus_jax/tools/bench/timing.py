"""Timing and memory helpers shared by the JAX runners and the torch peers: warm-up then timed runs, chained
stages timed one by one, RSS figures, the saved output array of a measurement."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def timed_runs(call, repeats: int, sync=lambda x: x, budget_s: float | None = None):
    """Run `call()` once (warm-up, timed apart), then `repeats` times. -> (first output, first_s, [run_s]).

    budget_s: stop the timed runs early (after at least one) when the next one, at the last one's length,
    would take their total past it; None: all `repeats`.
    """
    start = time.perf_counter()
    out = sync(call())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        if budget_s is not None and runs and sum(runs) + runs[-1] > budget_s:
            break
        start = time.perf_counter()
        sync(call())
        runs.append(time.perf_counter() - start)
    return out, first, runs


def timing_fields(first, runs) -> dict:
    return dict(first_run_s=first, run_s=statistics.median(runs), runs_s=runs)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def save_output(spec: dict, array) -> None:
    if spec.get("output"):
        np.save(spec["output"], np.asarray(array, np.float32))


def staged(stages, sync):
    """Chain `stages` [(name, fn)], every fn taking the previous output (None for the first), timing each.

    -> (call, log): call() runs them all and returns the last output; log collects one [seconds per stage]
    list per call.
    """
    log = []

    def call():
        out, times = None, []
        for _, fn in stages:
            start = time.perf_counter()
            out = sync(fn(out))
            times.append(time.perf_counter() - start)
        log.append(times)
        return out

    return call, log


def stage_medians(stages, log) -> dict | None:
    """{stage name: median seconds over the timed runs (the warm-up excluded)}; None for a single stage."""
    if len(stages) < 2:
        return None
    return {name: statistics.median(times[i] for times in log[1:]) for i, (name, _) in enumerate(stages)}
