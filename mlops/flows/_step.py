"""The `mlops-step` flow (level 0, `mlops run <step>`): one step by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlops import steps
from mlops._atomic import write_atomic
from mlops._names import STEP_FLOW
from mlops.artifacts import DatasetSnapshot, TestMetrics, TrainedModel
from mlops.flows._pipeline import (
    _log_run,
    _recorded,
    _run,
    console,
    evaluate,
    flow,
    ingest,
    register,
    report,
    train,
    validate,
)
from mlops.recipe.schema import Config
from mlops.stack import Stack


def _load_work(path: Path) -> dict[str, Any]:
    """Level 0's work file: what each `mlops run <step>` left for the next, as typed artifacts."""
    raw = json.loads(path.read_text()) if path.is_file() else {}
    work: dict[str, Any] = {}
    if "dataset" in raw:
        work["dataset"] = DatasetSnapshot(**raw["dataset"])
    if raw.get("validated"):
        work["validated"] = True
    if "trained" in raw:
        work["trained"] = TrainedModel(**raw["trained"])
    if "metrics" in raw:
        m = raw["metrics"]
        work["metrics"] = TestMetrics(**m) if "values" in m else TestMetrics(values=m)
    return work


def _save_work(path: Path, work: dict[str, Any]) -> None:
    write_atomic(path, json.dumps({k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v
                                   for k, v in work.items()}, indent=2))


@flow(name=STEP_FLOW, log_prints=False)
def step_flow(config: Config, project: str, state_dir: str, step: str) -> dict[str, Any]:
    """Level 0: one step by hand (see _step); a step that fails (a validate that quarantines) is in the history
    with its reason."""
    with _recorded(Stack(config, project, state_dir), STEP_FLOW, "manual", [step]):
        return _step(config, project, state_dir, step)


def _step(config: Config, project: str, state_dir: str, step: str) -> dict[str, Any]:
    """Level 0: one step by hand (`mlops run <step>`); each step reads what the previous one left.

    Each is a process of its own: train leaves its tracking run open, evaluate and register reopen it, and
    register ends it."""
    stack = Stack(config, project, state_dir)
    report.started(stack, f"run-{step}")
    wp = stack.layout.work(config.name)
    work = _load_work(wp)
    steps.require(step, work, config.name)
    result: Any
    if step == "ingest":
        work = {"dataset": _run("ingest", ingest, stack)}
        result = work["dataset"]
    elif step == "validate":
        result = _run("validate", validate, stack, work["dataset"])
        steps.record_snapshot(stack, work["dataset"], "manual")
        work["validated"] = True
    elif step == "train":
        work["dataset"] = steps.training_data(stack, work["dataset"])  # model.init_from
        try:
            work["trained"] = result = _run("train", train, stack, work["dataset"], False)
        except BaseException:
            steps.end_open_runs("FAILED")
            raise
        steps.leave_open_runs()  # `mlops run evaluate` and `register` log into it, and register ends it
        work.pop("metrics", None)
    elif step == "evaluate":
        _reopen(stack, work["trained"])
        try:
            work["metrics"] = result = _run("evaluate", evaluate, stack, work["dataset"], work["trained"])
        except BaseException:
            steps.end_open_runs("FAILED")
            raise
        steps.leave_open_runs()
    else:
        _reopen(stack, work["trained"])
        try:  # register logs lineage.json into the run and ends it FINISHED
            result = _run("register", register, stack, work["dataset"], work["trained"], work["metrics"])
        finally:
            steps.end_open_runs("FAILED")
        if result.new:
            stack.model_store.set_status(config.name, result.version, "registered")
    _save_work(wp, work)
    _log_run(stack, STEP_FLOW, "manual", steps=[step],
             **({"version": result.version} if step == "register" else {}))
    if isinstance(result, TestMetrics):
        return result.values
    return result.model_dump(mode="json") if hasattr(result, "model_dump") else result


def _reopen(stack: Stack, trained: TrainedModel) -> None:
    if not steps.reopen_run(stack, trained.tracking_run_id):
        # e.g. tracking.* changed since train: the registry still keeps the metrics
        console.print(f"  ! tracking run {trained.tracking_run_id} of `mlops run train` not found "
                      f"<tracking.flavor={stack.cfg.tracking.flavor}>, so nothing is logged to it", markup=False)
