"""The `mlops-train` flow (level 2+, on mlops.dataset.validated; level 4 on drift, with a data refresh first):
train → evaluate → register [→ gate → export → deploy].
"""

from __future__ import annotations

from typing import Any

from mlops import steps
from mlops._names import GATE_PASSED, GATE_REJECTED, MODEL_DEPLOYED, MODEL_REGISTERED, TRAIN_FLOW, model_resource
from mlops.errors import DataError
from mlops.flows._pipeline import (
    _emit,
    _log_run,
    _recorded,
    deploy,
    evaluate,
    export,
    flow,
    gate,
    ingest,
    register,
    report,
    train,
    validate,
)
from mlops.plan import compile_plan
from mlops.recipe.schema import Config
from mlops.stack import Stack


@flow(name=TRAIN_FLOW, log_prints=False)
def train_flow(config: Config, project: str, state_dir: str, snapshot: str = "", trigger: str = "manual",
               release: bool = False, refresh: bool = False, drift_window: str | int = "") -> dict[str, Any]:
    """Level 2+: train, register and (level 3) gate and deploy (see _train); a run that fails is in the
    history with its reason."""
    with _recorded(Stack(config, project, state_dir), TRAIN_FLOW, trigger, ["train", "evaluate", "register"]):
        return _train(config, project, state_dir, snapshot, trigger, release, refresh, drift_window)


def _train(config: Config, project: str, state_dir: str, snapshot: str, trigger: str, release: bool,
           refresh: bool, drift_window: str | int) -> dict[str, Any]:
    """Level 2+: train on a validated snapshot and register; with `release` (level 3), gate and deploy.

    `refresh` (level 4, on drift): first take the data location through ingest and the validation gate, so
    the retrain uses the latest data; a batch that fails is quarantined and nothing is trained.
    """
    stack = Stack(config, project, state_dir)
    report.started(stack, trigger)
    about: dict[str, Any] = {"drift_window": int(drift_window)} if str(drift_window).isdigit() else {}
    if refresh:
        latest = ingest(stack)
        if latest.fingerprint not in steps.validated_snapshots(stack):
            try:
                validate(stack, latest)
            except DataError as exc:
                _log_run(stack, TRAIN_FLOW, trigger, steps=["ingest", "validate"], outcome="quarantined",
                         reasons=[str(exc)], **about)
                return {"new_version": False, "status": "quarantined"}
            steps.record_snapshot(stack, latest, trigger)
        snapshot = latest.path
    dataset = steps.training_data(stack, steps.latest_snapshot(stack, snapshot))  # data.window, model.init_from
    try:
        trained = train(stack, dataset, False)
        metrics = evaluate(stack, dataset, trained)
        version = register(stack, dataset, trained, metrics)
    finally:
        steps.end_open_runs("FAILED")
    n, name = version.version, config.name
    done = ["train", "evaluate", "register"]
    entry: dict[str, Any] = {"version": n, "snapshot": dataset.path, "metrics": metrics.values, **about}
    if not version.new:
        _log_run(stack, TRAIN_FLOW, trigger, steps=done, outcome="already registered", **entry)
        return {"version": n, "new_version": False}
    stack.model_store.set_status(name, n, "candidate" if release else "registered")
    _emit(MODEL_REGISTERED, model_resource(config.name), {"version": n, "metrics": metrics.values})
    if not release:
        _log_run(stack, TRAIN_FLOW, trigger, steps=done, outcome="registered", **entry)
        return {"version": n, "new_version": True, "status": "registered"}
    (gate_spec,) = compile_plan(config).gates
    verdict = gate(stack, gate_spec, version, metrics)
    entry["gate"] = verdict.model_dump()
    if not verdict.passed:
        _emit(GATE_REJECTED, model_resource(config.name), {"version": n, "champion": verdict.champion_version,
                                                      "reasons": verdict.reasons})
        _log_run(stack, TRAIN_FLOW, trigger, steps=[*done, "gate"], outcome="rejected", **entry)
        return {"version": n, "new_version": True, "status": "rejected", "reasons": verdict.reasons}
    _emit(GATE_PASSED, model_resource(config.name), {"version": n, "champion": verdict.champion_version})
    served = deploy(stack, export(stack, version))
    _emit(MODEL_DEPLOYED, model_resource(config.name), {"version": n, "previous": verdict.champion_version,
                                                   "endpoint": served.endpoint, "url": served.url})
    _log_run(stack, TRAIN_FLOW, trigger, steps=[*done, "gate", "export", "deploy"], outcome="deployed", **entry)
    return {"version": n, "new_version": True, "status": "deployed", "endpoint": served.endpoint, "url": served.url}
