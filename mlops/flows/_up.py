"""The `mlops-up` flow (`mlops up`): ingest → validate → train → evaluate → register → export → deploy, once.

Each flow is a module of its own (see mlops.flows): Prefect builds a flow's parameter schema, the whole
Config, when the flow is defined, and a process defines only the flows it runs.
"""

from __future__ import annotations

from typing import Any

from prefect.runtime import flow_run

from mlops import steps
from mlops._names import UP_FLOW, UP_STEPS
from mlops.flows._pipeline import (
    _log_run,
    _no_new_rows,
    _recorded,
    _run,
    deploy,
    evaluate,
    export,
    flow,
    ingest,
    register,
    report,
    train,
    validate,
)
from mlops.plan import gate_spec
from mlops.recipe.schema import Config
from mlops.stack import Stack


@flow(name=UP_FLOW, log_prints=False)
def up_flow(cfg: Config, project: str, state_dir: str, progress: bool = False) -> dict[str, Any]:
    """Run the recipe end to end and return what is served."""
    stack = Stack(cfg, project, state_dir)
    report.started(stack, "up")
    with _recorded(stack, UP_FLOW, "up", list(UP_STEPS)):
        try:
            snapshot = _run("ingest", ingest, stack)
            if (unchanged := _no_new_rows(stack, snapshot)) is not None:
                return unchanged
            _run("validate", validate, stack, snapshot)
            steps.record_snapshot(stack, snapshot, "up")
            snapshot = steps.training_data(stack, snapshot)  # data.window, model.init_from
            trained = _run("train", train, stack, snapshot, progress)
            metrics = _run("evaluate", evaluate, stack, snapshot, trained)
            version = _run("register", register, stack, snapshot, trained, metrics)
        finally:
            steps.end_open_runs("FAILED")
        # Finite metrics at every level; the recipe's floors and ceilings too at level 0, which has no gate (from
        # level 3 the gate applies them to every candidate; the first champion of a level-1+ project is the
        # starting point that later candidates must beat).
        spec = gate_spec(cfg)
        if cfg.maturity.level > 0:
            spec = spec.model_copy(update={"floors": {}, "ceilings": {}})
        steps.hold_to_floors(stack, spec, version, metrics)
        exported = _run("export", export, stack, version)
        served = _run("deploy", deploy, stack, exported)
    _log_run(stack, UP_FLOW, "up", version=version.version, steps=list(UP_STEPS))
    return {"model": cfg.name, "version": version.version, "new_version": version.new,
            "metrics": metrics.values, "flow_run_id": str(flow_run.get_id()), "endpoint": served.endpoint,
            "url": served.url}
