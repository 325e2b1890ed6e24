"""The `up` flow's work as a plain Python script, without Prefect (the baseline of bench/up.py).

    python bench/_script.py PROJECT [hydra overrides ...]

It calls the very steps the flow's tasks call (mlops.steps: plain functions over a Stack and typed
artifacts), in the same order: ingest → validate → train → evaluate → register → export → deploy, so
flow/script isolates what Prefect adds (tasks, caching, the API, events), nothing else.

State: the project's state directory, under the model name <recipe>_script (its own registry entries,
snapshots index, training folders and served model), so it never collides with the flow's versions; it
deploys into the running model server. Prints one JSON line: per-step seconds (after imports).
"""

from __future__ import annotations

import json
import sys
import time

T_START = time.perf_counter()

import gc  # noqa: E402

from mlops._process import COLLECTOR_THRESHOLDS  # noqa: E402

# The collector settings `mlops` runs with (mlops.cli main), so that flow/script is what Prefect adds, not them.
gc.set_threshold(*COLLECTOR_THRESHOLDS)

import os  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")

from mlops import steps  # noqa: E402
from mlops.recipe import load  # noqa: E402
from mlops.stack import Stack  # noqa: E402

assert "prefect" not in sys.modules, "the plain script must not import Prefect"
T_IMPORTED = time.perf_counter()


def main(argv: list[str]) -> dict[str, float]:
    project = Path(argv[0]).resolve()
    overrides = argv[1:]
    laps: dict[str, float] = {"imports": T_IMPORTED - T_START}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        laps[name] = laps.get(name, 0.0) + now - t
        t = now

    cfg = load(overrides, project)
    name = f"{cfg.name}_script"
    cfg = cfg.model_copy(update={"name": name, "serving": cfg.serving.model_copy(update={"model_name": name})})
    stack = Stack(cfg, project)
    lap("config")

    snapshot = steps.ingest(stack)
    lap("ingest")
    steps.validate(stack, snapshot)
    steps.record_snapshot(stack, snapshot, "script")
    lap("validate")
    try:
        trained = steps.train(stack, snapshot)
        lap("train")
        metrics = steps.evaluate(stack, snapshot, trained)
        lap("evaluate")
        version = steps.register(stack, snapshot, trained, metrics)
        lap("register")
    finally:
        steps.end_open_runs("FAILED")
    exported = steps.export(stack, version)
    lap("export")
    steps.deploy(stack, exported, by="bench/_script.py")
    lap("deploy")
    laps["version"] = version.version
    laps["epochs"] = trained.epochs
    laps["after_imports"] = time.perf_counter() - T_IMPORTED
    return laps


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
