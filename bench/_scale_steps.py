"""The data-heavy steps of `up` in one process, timed in CPU seconds (bench/scale.py --steps).

    python bench/_scale_steps.py PROJECT [hydra overrides ...]

ingest → validate → train → evaluate → register, called as the flow's tasks call them (mlops.steps), with no
Prefect and no services (export and deploy do not depend on the row count). CPU seconds of this process per
step, and its peak RSS: on a shared machine CPU time compares two code versions where wall time mostly measures
the neighbours. Run with PYTHONPATH pointing at another checkout, it times that version of the framework on the
same data (the README's before/after). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # as the mlops CLI does

from mlops import steps  # noqa: E402
from mlops.recipe import load  # noqa: E402
from mlops.stack import Stack  # noqa: E402


def main(argv: list[str]) -> dict[str, float]:
    project, overrides = Path(argv[0]).resolve(), argv[1:]
    cfg = load(overrides, project)
    stack = Stack(cfg, project)
    laps: dict[str, float] = {}
    t, w = time.process_time(), time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t, w
        laps[name], laps[f"{name}_wall"] = time.process_time() - t, time.perf_counter() - w
        t, w = time.process_time(), time.perf_counter()

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
    return laps


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
