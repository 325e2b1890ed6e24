"""The profiling worker: a process of its own that turns spooled traffic samples into window profiles.

Triton's python backend runs `execute` and anything else of the model in one Python process. Profiling
there, even in a thread, takes the GIL for tens of milliseconds per whylogs call (its cost is mostly per
column, ~1.5 ms each, whatever the row count) and the request path waits for it: measured at 0.07x the
throughput of no monitoring (bench/monitoring.py). So the backend only samples rows and, once a second,
writes them to ``<spool>/<time>-<pid>-<n>.npz`` (numpy arrays, no pickle, renamed into place); this
worker, started by the backend at the lowest priority, profiles those files into the windows with a
:class:`TrafficProfiler` and deletes them. It stops when its stdin closes: the backend closes it to stop
it, and the operating system does when the backend is gone. It then profiles what is spooled and writes
the open window.

    python -m mlops.monitoring._spool <spool dir> <windows dir> <window seconds>
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mlops._atomic import atomic_path

TIME_COLUMN = "__served_at__"


def write_chunk(spool: Path, columns: dict[str, np.ndarray], served_at: np.ndarray, seq: int) -> Path:
    """One spool file, atomically: the worker never reads half of one."""
    spool.mkdir(parents=True, exist_ok=True)
    name = f"{time.time():.3f}-{os.getpid()}-{seq}.npz"
    # The temporary name ends in .tmp, so drain's "*.npz" never picks up a file still being written.
    with atomic_path(spool / name) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **columns, **{TIME_COLUMN: served_at})
    return spool / name


def drain(spool: Path, traffic) -> int:
    """Profile every spooled file into `traffic`, one submit per window, then delete them; returns the rows."""
    import pandas as pd  # here, not at the top: the serving process imports this module only to write chunks

    by_window: dict[float, list[pd.DataFrame]] = {}
    read = []
    for path in sorted(spool.glob("*.npz"), key=lambda p: float(p.name.split("-")[0])):
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError):  # unreadable: not ours, or cut short by a crash
            path.unlink(missing_ok=True)
            continue
        served_at = data.pop(TIME_COLUMN)
        frame = pd.DataFrame({k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in data.items()})
        # Rows belong to the window of the moment they were served.
        start = served_at - served_at % traffic.window_s
        for window in np.unique(start):
            by_window.setdefault(float(window), []).append(frame.loc[start == window])
        read.append(path)
    # One whylogs call per window for all the files read: its cost is mostly per call, not per row.
    for window, frames in sorted(by_window.items()):
        traffic.submit(pd.concat(frames, ignore_index=True), at=window)
    for path in read:
        path.unlink(missing_ok=True)
    return sum(len(f) for frames in by_window.values() for f in frames)


def _yield_cpu() -> None:
    """Serving first: run only on CPU nobody else wants, and catch up when the load drops.

    SCHED_IDLE (Linux) is preempted at once by any normal thread; nice 19 is not. It is set on every
    thread of the process, since numpy's BLAS threads exist before ``main`` runs (a priority is per thread
    on Linux: the old ``os.nice(19)`` left them at 0); threads started later inherit it.
    """
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in map(int, tasks):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            except OSError:
                pass


def main(spool: Path, windows_dir: Path, window_s: float, poll_s: float | None = None,
         profiler: str = "whylogs") -> None:
    from mlops.monitoring._profiler import make_profiler
    from mlops.monitoring._traffic import TrafficProfiler

    _yield_cpu()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Triton's stop reaches the group; we stop on EOF
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    spool.mkdir(parents=True, exist_ok=True)
    with open(spool / ".worker.lock", "a") as lock:
        # One drainer per spool: Triton starts a model (and so a worker) per instance, and during a reload the
        # old and new instances overlap. The others wait here, and take over when the drainer stops.
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop.is_set():  # stopped while another drains (tried once more after the stop, above)
                    return
                stop.wait(1.0)
        traffic = TrafficProfiler(make_profiler(profiler), windows_dir, sample_rate=1.0, window_s=window_s)
        if poll_s is None:
            # whylogs costs mostly per call and column, so profiling several seconds of spool in one call is
            # cheaper than one call a second; a window still gets its rows within a twelfth of its length.
            poll_s = min(5.0, max(1.0, window_s / 12))
        while not stop.wait(poll_s):
            drain(spool, traffic)
        drain(spool, traffic)
        traffic.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]),
         profiler=sys.argv[4] if len(sys.argv) > 4 else "whylogs")  # the monitor flavor (monitoring.flavor)
