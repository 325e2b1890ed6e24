"""The data-heavy steps of `up` in one process, timed in CPU seconds (bench/scale.py --steps).

    python bench/_scale_steps.py PROJECT [hydra overrides ...]

ingest → validate → train → evaluate → register, called as the flow's tasks call them (mlops.steps), with no
Prefect and no services (export and deploy do not depend on the row count). CPU seconds of this process per
step, its peak RSS during each step (`<step>_peak_mb`, sampled every 10 ms) and what the step left resident
(`<step>_after_mb`): on a shared machine CPU time compares two code versions where wall time mostly measures
the neighbours. SCALE_PREIMPORT=1 imports torch, Lightning, MLflow and whylogs first, so `start_rss_mb` is the
fixed part and each step's RSS above it is the data's. SCALE_PHASES=1 also cuts train into its phases: the split
(`split`), the preprocessing fitted on the training rows (`from_train`), each split's encoding into tensors
(`encode_<rows>`), the rest (`train`: the fit's epochs); evaluate and register's look-ups of the split are
`split_2`, `split_3`. Run with PYTHONPATH pointing at another checkout, it times that version of the framework on the
same data (the README's before/after). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # as the mlops CLI does

from mlops import steps  # noqa: E402
from mlops.recipe import load  # noqa: E402
from mlops.stack import Stack  # noqa: E402


class _RssPeak(threading.Thread):
    """This process's peak resident memory since the last `take`, sampled every 10 ms (ru_maxrss is the peak of the
    whole run only)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.proc, self.peak = psutil.Process(), 0

    def now(self) -> int:
        return self.proc.memory_info().rss

    def take(self) -> int:
        peak, self.peak = max(self.peak, self.now()), self.now()
        return peak

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)


def _phases(lap: Any) -> None:
    """Lap before and after train's phases (SCALE_PHASES=1), by wrapping the functions the steps call."""
    from mlops.steps import _steps
    from mlops.training import _module

    seen: dict[str, int] = {}

    def timed(name: str, f: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}_{seen[name]}"
            lap(f"{label}_before")
            out = f(*args, **kwargs)
            lap(label)
            return out
        return call

    _steps._split = timed("split", _steps._split)
    from_train = _module.TabularMLP.from_train.__func__
    _module.TabularMLP.from_train = classmethod(lambda cls, *a, **k: timed("from_train", from_train)(cls, *a, **k))
    dataset = _module.TabularDataModule._dataset
    _module.TabularDataModule._dataset = lambda self, frame: timed(f"encode_{len(frame)}", dataset)(self, frame)


def main(argv: list[str]) -> dict[str, Any]:
    project, overrides = Path(argv[0]).resolve(), argv[1:]
    if os.environ.get("SCALE_PREIMPORT"):  # the libraries first, so the steps' RSS is the data's, not imports'
        import lightning.pytorch  # noqa: F401
        import mlflow  # noqa: F401
        import whylogs  # noqa: F401

        import mlops.training  # noqa: F401
    cfg = load(overrides, project)
    stack = Stack(cfg, project)
    laps: dict[str, float] = {}
    t, w = time.process_time(), time.perf_counter()
    rss = _RssPeak()
    rss.start()
    laps["start_rss_mb"] = rss.now() / 2**20

    def lap(name: str) -> None:
        # CPU and wall seconds of the step; the peak RSS during it and the RSS it left (MB).
        nonlocal t, w
        laps[name], laps[f"{name}_wall"] = time.process_time() - t, time.perf_counter() - w
        laps[f"{name}_peak_mb"], laps[f"{name}_after_mb"] = rss.take() / 2**20, rss.now() / 2**20
        t, w = time.process_time(), time.perf_counter()

    if os.environ.get("SCALE_PHASES"):
        _phases(lap)
    snapshot = steps.ingest(stack)
    lap("ingest")
    steps.validate(stack, snapshot)
    lap("validate")
    try:
        trained = steps.train(stack, snapshot)
        lap("train")
        metrics = steps.evaluate(stack, snapshot, trained)
        lap("evaluate")
        steps.register(stack, snapshot, trained, metrics)
        lap("register")
    finally:
        steps.end_open_runs("FAILED")
    laps["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    laps["epochs"] = trained.epochs
    laps["metrics"] = {**trained.val_metrics, **metrics.values}  # the same numbers before and after a change
    return laps


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
