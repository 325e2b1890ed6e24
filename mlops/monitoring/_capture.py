"""Served traffic → sampled rows → the profiling worker, from inside Triton's python backend (``model.py``).

The backend passes what it already has (the input arrays of a dynamic batch and the outputs). `observe`
draws the sample (one RNG call) and keeps the picked rows' arrays; a thread writes them once a second to
a spool folder (numpy ``.npz``, a millisecond of work); a worker process (:mod:`mlops.monitoring._spool`)
profiles the spool into windows. No whylogs in this process: its calls hold the GIL long enough to stall
`execute` (measured at 0.07x the throughput with a profiling thread here). Settings come from the model's
config.pbtxt parameters, written by mlops.serving when monitoring is on:

    parameters { key: "mlops.monitoring_dir" value { string_value: "<state>/monitoring/<model>" } }
    parameters { key: "mlops.sample_rate" value { string_value: "0.1" } }
    parameters { key: "mlops.window_s" value { string_value: "60" } }
    parameters { key: "mlops.python" value { string_value: "<the python that runs mlops>" } }
    parameters { key: "mlops.path" value { string_value: "<the folder mlops is imported from>" } }

Windows land in ``<monitoring_dir>/<version>/windows/<start>.bin``, the spool in ``.../<version>/spool/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlops.monitoring._spool import write_chunk


class Capture:
    def __init__(self, signature: dict[str, Any], windows_dir: Path, sample_rate: float, window_s: float,
                 python: str | None = None, spool_s: float = 1.0, max_spooled: int = 600, profiler: str = "whylogs"):
        self.signature = signature
        self._signature_text = json.dumps(signature)
        self.sample_rate = sample_rate
        self.spool = Path(windows_dir).parent / "spool"
        self.spool_s = spool_s
        # Bounded: if the worker falls behind (the machine saturated by serving for minutes), samples are
        # dropped and counted rather than the spool growing without end.
        self.max_spooled = max_spooled
        self.dropped = 0
        self._rng = np.random.default_rng()
        self._pending: list[tuple[float, dict[str, np.ndarray]]] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        # The worker imports the mlops this module came from (a checkout's too), whatever PYTHONPATH the stub was
        # given; an installed one is in site-packages, which the worker's python has already.
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        if root.name not in ("site-packages", "dist-packages"):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
        self.worker = subprocess.Popen(
            # Inside Triton's stub sys.executable is not a Python; mlops puts its venv's bin first on PATH.
            [python or shutil.which("python3") or sys.executable, "-m", "mlops.monitoring._spool", str(self.spool), str(windows_dir),
             str(window_s), profiler], stdin=subprocess.PIPE, env=env)
        self._thread = threading.Thread(target=self._run, name="mlops-capture-spool", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- request path: a sample, a list append
    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        n = len(next(iter(inputs.values())))
        picked = np.flatnonzero(self._rng.random(n) < self.sample_rate)
        if picked.size == 0:
            return
        arrays = {name: block[picked] for name, block in (*inputs.items(), *outputs.items())}
        with self._lock:
            self._pending.append((time.time(), arrays))

    # ---------------------------------------------------------------- background: the arrays, then a spool file
    def _run(self) -> None:
        while not self._stop.wait(self.spool_s):
            self._spool()
        self._spool()

    def _spool(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        if self.spool.is_dir() and sum(1 for _ in self.spool.glob("*.npz")) >= self.max_spooled:
            self.dropped += sum(len(next(iter(a.values()))) for _t, a in pending)
            return
        # The arrays as served, one per input and output; the worker summarises them (served_columns): image
        # statistics cost O(pixels), and this thread shares the GIL with `execute`. One file per shape: an image
        # model serves any height and width, and arrays of different sizes do not stack.
        shapes: dict[tuple, list[tuple[float, dict[str, np.ndarray]]]] = {}
        for t, a in pending:
            shapes.setdefault(tuple((k, v.shape[1:]) for k, v in a.items()), []).append((t, a))
        for group in shapes.values():
            arrays: dict[str, np.ndarray] = {}
            for kind, specs in (("input", self.signature["inputs"]), ("output", self.signature["outputs"])):
                for spec in specs:
                    block = np.concatenate([a[spec["name"]] for _t, a in group])
                    # BYTES inputs arrive as str objects (model.py decodes them): fixed-width text, no pickle.
                    arrays[f"{kind}.{spec['name']}"] = block.astype(str) if block.dtype == object else block
            served_at = np.concatenate([np.full(len(next(iter(a.values()))), t) for t, a in group])
            self._seq += 1
            write_chunk(self.spool, arrays, served_at, self._seq, signature=self._signature_text)

    def close(self, timeout: float = 20) -> None:
        """Spool what is pending, then let the worker profile it and write the open window."""
        self._stop.set()
        self._thread.join(timeout)
        self.worker.stdin.close()  # EOF: the worker drains the spool, writes the open window and exits
        try:
            self.worker.wait(timeout)
        except subprocess.TimeoutExpired:
            self.worker.kill()
