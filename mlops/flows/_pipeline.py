"""The flows: `up` (the whole pipeline once), and the deployments' flows the Plan names.

    mlops-up     ingest → validate → train → evaluate → register → export → deploy   (`mlops up`)
    mlops-data   ingest → validate → snapshot, emits mlops.dataset.validated            (level 1+, scheduled)
    mlops-train  train → evaluate → register [→ gate → export → deploy]                 (level 2+, on that event)
    mlops-monitor  judge closed traffic windows: quarantine garbage, emit mlops.drift.detected (level 4, scheduled)
    mlops-step   one step, by hand                                                      (`mlops run <step>`)

The flows are thin: each task calls one step of mlops.steps (plain functions over a Stack and typed
artifacts) and adds what Prefect is for: caching, retries, events and the UI. Steps that are pure
functions of their inputs are cached on those inputs (train and evaluate on the training key: config that
affects the model + the data fingerprint), so a second `up` with nothing changed trains nothing. Retries
only where repeating is harmless: reading the source, and asking the server to load a version.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run
from rich.console import Console

from mlops import steps
from mlops._names import (
    DATA_FLOW,
    DATASET_QUARANTINED,
    DATASET_VALIDATED,
    GATE_PASSED,
    GATE_REJECTED,
    MANUAL_STEPS,
    MODEL_DEPLOYED,
    MODEL_REGISTERED,
    MONITOR_FLOW,
    MONITOR_STEP,
    STEP_FLOW,
    TRAIN_FLOW,
    UP_FLOW,
    UP_STEPS,
    dataset_resource,
    model_resource,
)
from mlops._atomic import write_atomic
from mlops.artifacts import (
    DatasetSnapshot,
    ExportedModel,
    GateVerdict,
    RegisteredVersion,
    ServedModel,
    TestMetrics,
    TrainedModel,
    ValidatedData,
)
from mlops.errors import DataError
from mlops.flows import _report as report
from mlops.plan import Gate, compile_plan, gate_spec
from mlops.recipe.schema import Config
from mlops.stack import Stack

console = Console(stderr=True, highlight=False, soft_wrap=True)

__all__ = ["MANUAL_STEPS", "UP_STEPS"]  # re-exported by mlops.flows


def _key_from(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    # v2: the results are typed artifacts since the flavor registry; results cached before are not reused.
    return f"{ctx.task.name}-v2-{params['snapshot'].key}"


# ---------------------------------------------------------------- tasks: one step each
@task(name="ingest", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def ingest(stack: Stack, full: bool = False) -> DatasetSnapshot:
    snapshot = steps.ingest(stack, full)
    report.ingested(stack, snapshot)
    return snapshot


@task(name="validate", cache_policy=NO_CACHE)
def validate(stack: Stack, snapshot: DatasetSnapshot) -> ValidatedData:
    """The data-validation gate; a failing batch is quarantined and never trained on (DataError)."""
    try:
        result = steps.validate(stack, snapshot)
    except DataError as exc:
        report.validation_failed(stack, snapshot, str(exc))
        raise
    report.validated(stack, result)
    return result


@task(name="train", cache_key_fn=_key_from, persist_result=True)
def train(stack: Stack, snapshot: DatasetSnapshot, progress: bool) -> TrainedModel:
    result = steps.train(stack, snapshot, progress)
    report.trained(stack, result)
    return result


@task(name="evaluate", cache_key_fn=_key_from, persist_result=True)
def evaluate(stack: Stack, snapshot: DatasetSnapshot, trained: TrainedModel) -> TestMetrics:
    metrics = steps.evaluate(stack, snapshot, trained)
    report.evaluated(stack, metrics)
    return metrics


@task(name="register", cache_policy=NO_CACHE)
def register(stack: Stack, snapshot: DatasetSnapshot, trained: TrainedModel, metrics: TestMetrics
             ) -> RegisteredVersion:
    version = steps.register(stack, snapshot, trained, metrics, run_id=str(flow_run.get_id()))
    report.registered(stack, version)
    return version


@task(name="gate", cache_policy=NO_CACHE)
def gate(stack: Stack, spec: Gate, version: RegisteredVersion, metrics: TestMetrics) -> GateVerdict:
    verdict = steps.gate(stack, spec, version, metrics)
    report.gated(stack, verdict, version)
    return verdict


@task(name="export", cache_policy=NO_CACHE)
def export(stack: Stack, version: RegisteredVersion) -> ExportedModel:
    """model.onnx + signature, the server's package beside it. Written once per version."""
    return steps.export(stack, version)


@task(name="deploy", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def deploy(stack: Stack, exported: ExportedModel) -> ServedModel:
    served = steps.deploy(stack, exported, by=f"flow:{_run_name()}")
    mv = stack.model_store.get(stack.cfg.name, exported.version)
    report.deployed(stack, served, (mv.lineage.get("tracking") or {}).get("run_id"))
    return served


@task(name="monitor", cache_policy=NO_CACHE)
def monitor(stack: Stack, trigger: str) -> dict[str, Any]:
    result = steps.monitor(stack, trigger, emit=lambda event, payload: _emit(event, model_resource(stack.cfg.name),
                                                                              payload),
                           log=lambda **entry: _log_run(stack, MONITOR_FLOW, trigger, steps=[MONITOR_STEP], **entry))
    report.monitored(stack, result)
    return result


def _run_name() -> str:
    return str(flow_run.get_name() or flow_run.get_id())


def _emit(event: str, resource: str, payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload)


def _log_run(stack: Stack, flow_name: str, trigger: str, **entry: Any) -> None:
    steps.log_run(stack, flow_name, trigger, str(flow_run.get_id()), **entry)


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


@contextmanager
def _recorded(stack: Stack, flow_name: str, trigger: str, step_names: list[str]):
    """A run that fails is in the history too (`mlops runs`), with its reason: quarantined when the data gate
    stopped it, failed otherwise. A failure the flow already recorded (with more detail) is not recorded twice."""
    try:
        yield
    except BaseException as exc:
        if not getattr(exc, "mlops_recorded", False):
            outcome = "quarantined" if isinstance(exc, DataError) else (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            _log_run(stack, flow_name, trigger, steps=step_names, outcome=outcome, reasons=[_reason(exc)])
            exc.mlops_recorded = True  # type: ignore[attr-defined]
        raise


def _run(name: str, fn, *args, **kwargs):
    """A task with a line of progress on the terminal (`mlops up`, `mlops run`)."""
    t0 = time.perf_counter()
    with console.status(f"[bold]{name}[/] ...", spinner="dots"):
        state = fn(*args, return_state=True, **kwargs)
    took = time.perf_counter() - t0
    result = state.result()
    note = " [dim](cached)[/]" if state.name == "Cached" else ""
    console.print(f"  [green]✓[/] {name:<9} {took:6.2f}s{note}")
    return result


# ---------------------------------------------------------------- flows
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


def _no_new_rows(stack: Stack, snapshot: DatasetSnapshot) -> dict[str, Any] | None:
    """`up` with data.incremental when no row is past the watermark and a champion is served: nothing to train."""
    store, name = stack.model_store, stack.cfg.name
    champion = store.aliases(name).get("champion")
    if snapshot.incremental.get("new_rows") != 0 or champion is None:
        return None
    said = _nothing_new(snapshot)
    console.print(f"  [green]✓[/] {said}; {name}@{champion} stays the champion", markup=True)
    _log_run(stack, UP_FLOW, "up", version=champion, steps=["ingest"], outcome="no new rows", reasons=[said])
    return {"model": name, "version": champion, "new_version": False, "new_rows": 0, "message": said,
            "metrics": store.get(name, champion).lineage["metrics"], "flow_run_id": str(flow_run.get_id()),
            "endpoint": stack.server.endpoint(champion), "url": stack.server.url}


def _nothing_new(snapshot: DatasetSnapshot) -> str:
    inc = snapshot.incremental
    return (f"no rows past the watermark {inc['column']}={inc['watermark']} <data.incremental.column>: no new "
            "snapshot, nothing retrained")


@flow(name=DATA_FLOW, log_prints=False)
def data_flow(config: Config, project: str, state_dir: str, trigger: str = "manual", full: bool = False
              ) -> dict[str, Any]:
    """Level 1+: look at the data (see _data); a run that fails is in the history with its reason."""
    with _recorded(Stack(config, project, state_dir), DATA_FLOW, trigger, ["ingest", "validate"]):
        return _data(config, project, state_dir, trigger, full)


def _data(config: Config, project: str, state_dir: str, trigger: str, full: bool = False) -> dict[str, Any]:
    """Level 1+: look at the data; new or changed data is validated, recorded and announced. With
    data.incremental only the rows past the watermark are read; `full` re-reads everything, a new chain."""
    from mlops.monitoring._batch import quarantined

    stack = Stack(config, project, state_dir)
    report.started(stack, trigger)
    snapshot = ingest(stack, full)
    if snapshot.incremental.get("new_rows") == 0:
        _log_run(stack, DATA_FLOW, trigger, steps=["ingest"], outcome="no new rows", reasons=[_nothing_new(snapshot)])
        return {"new": False, "snapshot": snapshot.path, "new_rows": 0, "message": _nothing_new(snapshot)}
    if snapshot.fingerprint in steps.validated_snapshots(stack) and not full:
        return {"new": False, "snapshot": snapshot.path}
    if (where := quarantined(stack.state_dir, config.name, snapshot.fingerprint)) is not None:
        Path(snapshot.path).unlink(missing_ok=True)  # the same bad file, looked at again: reported once
        return {"new": False, "quarantined": str(where)}
    try:
        validate(stack, snapshot)
    except DataError as exc:
        where = quarantined(stack.state_dir, config.name, snapshot.fingerprint)
        _log_run(stack, DATA_FLOW, trigger, steps=["ingest", "validate"], outcome="quarantined",
                 reasons=[str(exc)], quarantine=str(where))
        exc.mlops_recorded = True  # type: ignore[attr-defined]
        _emit(DATASET_QUARANTINED, dataset_resource(config.name), {"fingerprint": snapshot.fingerprint,
                                                             "quarantine": str(where)})
        raise
    if not steps.record_snapshot(stack, snapshot, trigger):
        return {"new": False, "snapshot": snapshot.path}
    _emit(DATASET_VALIDATED, dataset_resource(config.name), {"snapshot": snapshot.path,
                                                       "fingerprint": snapshot.fingerprint, "rows": snapshot.rows})
    _log_run(stack, DATA_FLOW, trigger, steps=["ingest", "validate"], outcome="new snapshot",
             snapshot=snapshot.path, rows=snapshot.rows, **({"incremental": snapshot.incremental}
                                                           if snapshot.incremental else {}))
    return {"new": True, "snapshot": snapshot.path, "fingerprint": snapshot.fingerprint, "rows": snapshot.rows,
            **({"incremental": snapshot.incremental} if snapshot.incremental else {})}


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


@flow(name=MONITOR_FLOW, log_prints=False)
def monitor_flow(config: Config, project: str, state_dir: str, trigger: str = "schedule") -> dict[str, Any]:
    """Level 4: judge each closed window of the champion's served traffic, once (see mlops.steps.monitor)."""
    stack = Stack(config, project, state_dir)
    report.started(stack, trigger)
    with _recorded(stack, MONITOR_FLOW, trigger, [MONITOR_STEP]):
        return monitor(stack, trigger)


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
