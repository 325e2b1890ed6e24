"""Profiling sampled rows into windows: batched, in a thread, merged into one whylogs profile per window.

Used by the profiling worker (:mod:`mlops.monitoring._spool`), a process of its own beside Triton's model:
whylogs calls cost ~1.5 ms per column whatever the row count and hold the GIL, so they never run in the
process that serves. Measured here (bench/monitoring.py): ~48k rows/s for 10 columns in one call, ~22k for
30; a Triton at 12k rows/s sampled at 0.1 gives 1.2k rows/s, a few percent of a core. `submit()` draws a
Bernoulli sample (1.0 in the worker: the backend sampled already) and enqueues; the thread profiles what
is queued in bursts and merges it into the current window's profile, which it writes atomically to
``<dir>/<window start, unix seconds>.bin`` when the window's time is over (and on `close()`). With 0.1, a
60 s window at 12k rows/s still holds ~72k rows: drift keeps its power (see tests).
"""

from __future__ import annotations

import queue
import threading
import time
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops.monitoring._profiler import Profiler


class TrafficProfiler:
    def __init__(self, profiler: Profiler, out_dir: Path, *, sample_rate: float, window_s: float,
                 seed: int | None = None, clock=time.time, max_queue: int = 1024):
        self.profiler = profiler
        self.out_dir = Path(out_dir)
        self.sample_rate = sample_rate
        self.window_s = window_s
        self.clock = clock
        self._rng = np.random.default_rng(seed)
        # Bounded: if profiling falls behind, samples are dropped rather than memory growing or requests waiting.
        self._queue: queue.Queue[tuple[float, pd.DataFrame] | None] = queue.Queue(maxsize=max_queue)
        self.dropped = 0
        self._window_start: float | None = None
        self._window_profile: Any = None
        self._thread = threading.Thread(target=self._run, name="mlops-traffic-profiler", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- request path: cheap, never blocks
    def submit(self, frame: pd.DataFrame, at: float | None = None) -> None:
        """Rows served at `at` (unix seconds; default now)."""
        keep = self._rng.random(len(frame)) < self.sample_rate
        if not keep.any():
            return
        try:
            self._queue.put_nowait((self.clock() if at is None else at, frame.loc[keep]))
        except queue.Full:
            self.dropped += int(keep.sum())

    # ---------------------------------------------------------------- background
    def _run(self) -> None:
        done = False
        while not done:
            try:
                # Wake up now and then: a window whose time is over is written even when traffic stopped.
                items = [self._queue.get(timeout=min(1.0, self.window_s / 4))]
            except queue.Empty:
                if self._window_start is not None and self.clock() >= self._window_start + self.window_s:
                    self._flush()
                continue
            while len(items) < 64:  # drain what is there: one profile call per burst, not per request
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in items:
                done, items = True, items[: items.index(None)]
            # Rows belong to the window of the moment they were served, not of when they are profiled.
            for start, group in groupby(items, key=lambda it: it[0] - it[0] % self.window_s):
                self._add(start, pd.concat([f for _t, f in group], ignore_index=True))
        self._flush()

    def _add(self, window_start: float, frame: pd.DataFrame) -> None:
        if self._window_start is not None and window_start != self._window_start:
            self._flush()
        self._window_start = window_start
        prof = self.profiler.profile(frame)
        self._window_profile = prof if self._window_profile is None else self.profiler.merge(self._window_profile,
                                                                                              prof)

    def _flush(self) -> None:
        if self._window_profile is not None and self._window_start is not None:
            path = self.out_dir / f"{int(self._window_start)}.bin"
            if path.is_file():  # rows of a window already written (they waited in the queue): merge them in
                self._window_profile = self.profiler.merge(self.profiler.read(path), self._window_profile)
            self.profiler.write(self._window_profile, path)
        self._window_start, self._window_profile = None, None

    def close(self, timeout: float = 30) -> None:
        """Profile what is queued and write the open window."""
        self._queue.put(None)
        self._thread.join(timeout)


def windows(out_dir: Path) -> list[tuple[int, Path]]:
    """The stored windows, oldest first, as (start unix seconds, path)."""
    if not Path(out_dir).is_dir():
        return []
    return sorted((int(p.stem), p) for p in Path(out_dir).glob("*.bin") if p.stem.isdigit())
