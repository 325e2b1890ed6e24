"""The flows: `up` (the whole pipeline once), and the deployments' flows the Plan names.

    mlops-up     ingest → validate → train → evaluate → register → export → deploy   (`mlops up`)
    mlops-data   ingest → validate → snapshot, emits mlops.dataset.validated            (level 1+, scheduled)
    mlops-train  train → evaluate → register [→ gate → export → deploy]                 (level 2+, on that event)
    mlops-monitor  judge closed traffic windows: quarantine garbage, emit mlops.drift.detected (level 4, scheduled)
    mlops-step   one step, by hand                                                      (`mlops run <step>`)

One coarse Prefect task per step. Steps that are pure functions of their inputs
are cached on those inputs (train and evaluate on the training key: config that
affects the model + the data fingerprint), so a second `up` with nothing
changed trains nothing. Retries only where repeating is harmless: reading the
source, and asking Triton to load a version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.context import TaskRunContext
from prefect.runtime import flow_run
from rich.console import Console

from mlops.recipe.keys import config_hash, training_key
from mlops.recipe.schema import Config
from mlops.tracking import RunStatus, make_tracker

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _key_from(ctx: TaskRunContext, params: dict[str, Any]) -> str:
    return f"{ctx.task.name}-{params['dataset']['key']}"


# ---------------------------------------------------------------- tasks
@task(name="ingest", retries=2, retry_delay_seconds=2)
def ingest(cfg: Config, project: str, state_dir: str) -> dict[str, Any]:
    from mlops.data import fingerprint, read_frame
    from mlops.registry import write_atomic

    frame = read_frame(cfg.data, Path(project), cache_dir=Path(state_dir) / "cache", write_cache=True)
    frame = frame[[*cfg.data.features, cfg.data.target]]
    fp = fingerprint(frame)
    snapshot = Path(state_dir) / "datasets" / cfg.name / f"{fp.removeprefix('sha256:')[:20]}.parquet"
    if not snapshot.exists():
        import io

        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        write_atomic(snapshot, buf.getvalue())
    return {"fingerprint": fp, "path": str(snapshot), "rows": len(frame), "key": training_key(cfg, fp)}


@task(name="validate")
def validate(cfg: Config, dataset: dict[str, Any], state_dir: str) -> dict[str, Any]:
    """The data-validation gate: the recipe's checks, then whylogs constraints against the champion's reference
    profile. A failing batch is quarantined (moved out of the datasets, with a report) and never trained on."""
    import pandas as pd

    from mlops.data import validate_frame
    from mlops.errors import DataError
    from mlops.monitoring._batch import check_batch, quarantine, render_failures

    frame = pd.read_parquet(dataset["path"])
    report = validate_frame(frame, cfg.data, cfg.model.task)
    problems = list(report.problems)
    batch = None
    if cfg.monitoring.flavor != "none":
        batch = check_batch(cfg, Path(state_dir), frame)
        if not batch.ok:
            problems.append(render_failures(batch, f"the batch {dataset['path']}"))
    if problems:
        where = quarantine(Path(state_dir), cfg.name, dataset["fingerprint"], Path(dataset["path"]), problems,
                           batch, source=cfg.data.path or cfg.data.dataset)
        raise DataError(f"the data of recipe {cfg.name!r} failed validation and was quarantined in {where} "
                        f"(report.json there); training will not use it. Fix the source and let it be ingested "
                        f"again.\n" + "\n".join(problems))
    return {"rows": report.rows, "null_fractions": report.null_fractions}


def _split(cfg: Config, dataset: dict[str, Any]):
    import pandas as pd

    from mlops.training import split_frame

    return split_frame(pd.read_parquet(dataset["path"]), cfg.data, cfg.model.task)


# Runs opened by train stay open through evaluate and register (same process), then close.
_open_runs: dict[str, Any] = {}


@task(name="train", cache_key_fn=_key_from, persist_result=True)
def train(cfg: Config, dataset: dict[str, Any], state_dir: str, progress: bool) -> dict[str, Any]:
    from mlops.tracking import make_tracker
    from mlops.training import fit

    out = Path(state_dir) / "training" / cfg.name / dataset["key"]
    tracker = make_tracker(cfg.tracking, Path(state_dir))
    run_id = tracker.start_run(f"{cfg.name}-{dataset['key'][:8]}", tags={"mlops.model": cfg.name,
                                                                          "mlops.key": dataset["key"]})
    _open_runs[run_id] = tracker
    tracker.log_params(cfg.model_dump(mode="json", include={"data", "model", "compute", "seed"}))
    result = fit(cfg, _split(cfg, dataset), out, loggers=[tracker.lightning_logger()], progress=progress)
    return {"dir": str(out), "checkpoint": str(result.checkpoint), "val_metrics": result.val_metrics,
            "epochs": result.epochs, "tracking_run_id": run_id}


@task(name="evaluate", cache_key_fn=_key_from, persist_result=True)
def evaluate(cfg: Config, dataset: dict[str, Any], trained: dict[str, Any]) -> dict[str, float]:
    from mlops.training import evaluate as test_metrics
    from mlops.training import load_module

    metrics = test_metrics(cfg, load_module(Path(trained["checkpoint"])), _split(cfg, dataset))
    if (tracker := _open_runs.get(trained["tracking_run_id"])) is not None:
        tracker.log_metrics(metrics)
    return metrics


@task(name="register")
def register(cfg: Config, dataset: dict[str, Any], trained: dict[str, Any], metrics: dict[str, float],
             state_dir: str) -> dict[str, Any]:
    from mlops.registry import Registry

    train_dir = Path(trained["dir"])
    files = {"model.ckpt": Path(trained["checkpoint"]), "history.json": train_dir / "history.json"}
    if cfg.monitoring.flavor == "whylogs":
        files["reference_profile.bin"] = _reference_profile(cfg, dataset, train_dir)
    lineage = {
        "key": dataset["key"],
        "config_hash": config_hash(cfg),
        "data_fingerprint": dataset["fingerprint"],
        "data_snapshot": dataset["path"],
        "metrics": {**trained["val_metrics"], **metrics},
        "epochs": trained["epochs"],
        "tracking": {"flavor": cfg.tracking.flavor, "run_id": trained["tracking_run_id"]},
        "flow_run_id": str(flow_run.get_id()),
    }
    mv = Registry(Path(state_dir) / "registry").register(cfg.name, files, lineage)
    if (tracker := _open_runs.pop(trained["tracking_run_id"], None)) is not None:
        tracker.log_dict(mv.lineage, "lineage.json")
        tracker.end_run("FINISHED")
    return {"model": mv.model, "version": mv.version, "path": str(mv.path), "new": mv.lineage["flow_run_id"]
            == lineage["flow_run_id"]}


def _reference_profile(cfg: Config, dataset: dict[str, Any], train_dir: Path) -> Path:
    """The training split's whylogs profile: the reference that drift is measured against."""
    path = train_dir / "reference_profile.bin"
    if not path.exists():
        import os

        os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
        import whylogs as why

        from mlops._atomic import atomic_path

        with atomic_path(path) as tmp:
            why.log(_split(cfg, dataset).train).view().write(str(tmp))
    return path


@task(name="export")
def export(cfg: Config, version: dict[str, Any], state_dir: str) -> dict[str, Any]:
    """model.onnx + signature, a stock-Triton (onnxruntime backend) repository beside it. Written once."""
    from mlops.serving import export_version

    return export_version(cfg, version, Path(state_dir))


@task(name="deploy", retries=1, retry_delay_seconds=2)
def deploy(cfg: Config, exported: dict[str, Any], state_dir: str) -> dict[str, Any]:
    from mlops.registry import Registry
    from mlops.serving import deploy_version

    served = deploy_version(cfg, exported, Path(state_dir))
    Registry(Path(state_dir) / "registry").promote(cfg.name, int(exported["version"]), by=f"flow:{_run_name()}")
    return served


def _run_name() -> str:
    return str(flow_run.get_name() or flow_run.get_id())


# ---------------------------------------------------------------- snapshots, events, run log
STEPS_UP = ("ingest", "validate", "train", "evaluate", "register", "export", "deploy")


def _snapshots(state_dir: str, name: str) -> Path:
    return Path(state_dir) / "datasets" / name / "index.json"


def validated_snapshots(state_dir: str, name: str) -> dict[str, dict[str, Any]]:
    """Validated dataset snapshots by fingerprint, in the order they were recorded."""
    import json

    p = _snapshots(state_dir, name)
    return json.loads(p.read_text()) if p.is_file() else {}


def _record_snapshot(state_dir: str, name: str, dataset: dict[str, Any], trigger: str) -> bool:
    """Record a validated snapshot; False if it was already recorded (nothing new)."""
    import json

    from mlops.registry import write_atomic

    index = validated_snapshots(state_dir, name)
    if dataset["fingerprint"] in index:
        return False
    index[dataset["fingerprint"]] = {**dataset, "validated_at": time.time(), "trigger": trigger}
    write_atomic(_snapshots(state_dir, name), json.dumps(index, indent=2))
    return True


def _emit(event: str, resource: str, payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload)


def _log_run(cfg: Config, state_dir: str, flow_name: str, trigger: str, **entry: Any) -> None:
    from mlops.registry import RunLog

    RunLog(Path(state_dir) / "runs").record(cfg.name, {"flow": flow_name, "trigger": trigger,
                                                       "flow_run_id": str(flow_run.get_id()), **entry})


def _config(config: dict[str, Any] | Config) -> Config:
    return config if isinstance(config, Config) else Config.model_validate(config)


# ---------------------------------------------------------------- flow
def _run(name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    with console.status(f"[bold]{name}[/] ...", spinner="dots"):
        state = fn(*args, return_state=True, **kwargs)
    took = time.perf_counter() - t0
    result = state.result()
    note = " [dim](cached)[/]" if state.name == "Cached" else ""
    console.print(f"  [green]✓[/] {name:<9} {took:6.2f}s{note}")
    return result


@flow(name="mlops-up", log_prints=False, validate_parameters=False)
def up_flow(cfg: Config, project: str, state_dir: str, progress: bool = False) -> dict[str, Any]:
    """Run the recipe end to end and return what is served."""
    try:
        dataset = _run("ingest", ingest, cfg, project, state_dir)
        _run("validate", validate, cfg, dataset, state_dir)
        _record_snapshot(state_dir, cfg.name, dataset, "up")
        trained = _run("train", train, cfg, dataset, state_dir, progress)
        metrics = _run("evaluate", evaluate, cfg, dataset, trained)
        version = _run("register", register, cfg, dataset, trained, metrics, state_dir)
    finally:
        while _open_runs:
            _open_runs.popitem()[1].end_run("FAILED")
    exported = _run("export", export, cfg, version, state_dir)
    served = _run("deploy", deploy, cfg, exported, state_dir)
    _log_run(cfg, state_dir, "mlops-up", "up", version=version["version"], steps=list(STEPS_UP))
    return {"model": cfg.name, "version": version["version"], "new_version": version["new"],
            "metrics": metrics, "flow_run_id": str(flow_run.get_id()), **served}


@flow(name="mlops-data", log_prints=False, validate_parameters=False)
def data_flow(config: dict[str, Any], project: str, state_dir: str, trigger: str = "manual") -> dict[str, Any]:
    """Level 1+: look at the data; new or changed data is validated, recorded and announced."""
    from mlops.errors import DataError
    from mlops.plan._levels import DATASET_QUARANTINED, DATASET_VALIDATED, dataset_resource

    from mlops.monitoring._batch import quarantined

    cfg = _config(config)
    dataset = ingest(cfg, project, state_dir)
    if dataset["fingerprint"] in validated_snapshots(state_dir, cfg.name):
        return {"new": False, "snapshot": dataset["path"]}
    if (where := quarantined(Path(state_dir), cfg.name, dataset["fingerprint"])) is not None:
        Path(dataset["path"]).unlink(missing_ok=True)  # the same bad file, looked at again: reported once
        return {"new": False, "quarantined": str(where)}
    try:
        validate(cfg, dataset, state_dir)
    except DataError as exc:
        where = quarantined(Path(state_dir), cfg.name, dataset["fingerprint"])
        _log_run(cfg, state_dir, "mlops-data", trigger, steps=["ingest", "validate"], outcome="quarantined",
                 reasons=[str(exc)], quarantine=str(where))
        _emit(DATASET_QUARANTINED, dataset_resource(cfg), {"fingerprint": dataset["fingerprint"],
                                                          "quarantine": str(where)})
        raise
    if not _record_snapshot(state_dir, cfg.name, dataset, trigger):
        return {"new": False, "snapshot": dataset["path"]}
    _emit(DATASET_VALIDATED, dataset_resource(cfg), {"snapshot": dataset["path"],
                                                    "fingerprint": dataset["fingerprint"], "rows": dataset["rows"]})
    _log_run(cfg, state_dir, "mlops-data", trigger, steps=["ingest", "validate"], outcome="new snapshot",
             snapshot=dataset["path"], rows=dataset["rows"])
    return {"new": True, "snapshot": dataset["path"], "fingerprint": dataset["fingerprint"]}


def _dataset(cfg: Config, state_dir: str, snapshot: str) -> dict[str, Any]:
    """The validated snapshot at `snapshot` (a path), or the latest one."""
    from mlops.errors import DataError

    index = validated_snapshots(state_dir, cfg.name)
    found = [d for d in index.values() if d["path"] == snapshot] if snapshot and "{{" not in snapshot else []
    if not found and not index:
        raise DataError(f"recipe {cfg.name!r} has no validated dataset snapshot yet: run `mlops run ingest "
                        f"recipe={cfg.name}` and `mlops run validate recipe={cfg.name}` first.")
    d = found[0] if found else list(index.values())[-1]
    return {k: d[k] for k in ("fingerprint", "path", "rows", "key")}


@flow(name="mlops-train", log_prints=False, validate_parameters=False)
def train_flow(config: dict[str, Any], project: str, state_dir: str, snapshot: str = "", trigger: str = "manual",
               release: bool = False, refresh: bool = False, drift_window: str | int = "") -> dict[str, Any]:
    """Level 2+: train on a validated snapshot and register; with `release` (level 3), gate and deploy.

    `refresh` (level 4, on drift): first take the data location through ingest and the validation gate, so
    the retrain uses the latest data; a batch that fails is quarantined and nothing is trained.
    """
    from mlops.errors import DataError
    from mlops.plan import compile_plan
    from mlops.plan._levels import GATE_PASSED, GATE_REJECTED, MODEL_DEPLOYED, MODEL_REGISTERED, model_resource
    from mlops.registry import Registry

    cfg = _config(config)
    registry = Registry(Path(state_dir) / "registry")
    about: dict[str, Any] = {"drift_window": int(drift_window)} if str(drift_window).isdigit() else {}
    if refresh:
        latest = ingest(cfg, project, state_dir)
        if latest["fingerprint"] not in validated_snapshots(state_dir, cfg.name):
            try:
                validate(cfg, latest, state_dir)
            except DataError as exc:
                _log_run(cfg, state_dir, "mlops-train", trigger, steps=["ingest", "validate"], outcome="quarantined",
                         reasons=[str(exc)], **about)
                return {"new_version": False, "status": "quarantined"}
            _record_snapshot(state_dir, cfg.name, latest, trigger)
        snapshot = latest["path"]
    dataset = _dataset(cfg, state_dir, snapshot)
    try:
        trained = train(cfg, dataset, state_dir, False)
        metrics = evaluate(cfg, dataset, trained)
        version = register(cfg, dataset, trained, metrics, state_dir)
    finally:
        while _open_runs:
            _open_runs.popitem()[1].end_run("FAILED")
    n = version["version"]
    steps = ["train", "evaluate", "register"]
    entry: dict[str, Any] = {"version": n, "snapshot": dataset["path"], "metrics": metrics, **about}
    if not version["new"]:
        _log_run(cfg, state_dir, "mlops-train", trigger, steps=steps, outcome="already registered", **entry)
        return {"version": n, "new_version": False}
    registry.set_status(cfg.name, n, "candidate" if release else "registered")
    _emit(MODEL_REGISTERED, model_resource(cfg), {"version": n, "metrics": metrics})
    if not release:
        _log_run(cfg, state_dir, "mlops-train", trigger, steps=steps, outcome="registered", **entry)
        return {"version": n, "new_version": True, "status": "registered"}
    (gate_spec,) = compile_plan(cfg).gates
    champion = registry.aliases(cfg.name).get("champion")
    verdict = gate(gate_spec, metrics, registry.get(cfg.name, champion).lineage["metrics"] if champion else None)
    entry["gate"] = {**verdict, "champion_version": champion}
    if not verdict["passed"]:
        registry.set_status(cfg.name, n, "rejected", verdict["reasons"])
        _emit(GATE_REJECTED, model_resource(cfg), {"version": n, "champion": champion, "reasons": verdict["reasons"]})
        _log_run(cfg, state_dir, "mlops-train", trigger, steps=[*steps, "gate"], outcome="rejected", **entry)
        return {"version": n, "new_version": True, "status": "rejected", "reasons": verdict["reasons"]}
    registry.set_status(cfg.name, n, "registered")
    _emit(GATE_PASSED, model_resource(cfg), {"version": n, "champion": champion})
    served = deploy(cfg, export(cfg, version, state_dir), state_dir)
    _emit(MODEL_DEPLOYED, model_resource(cfg), {"version": n, "previous": champion, **served})
    _log_run(cfg, state_dir, "mlops-train", trigger, steps=[*steps, "gate", "export", "deploy"], outcome="deployed",
             **entry)
    return {"version": n, "new_version": True, "status": "deployed", **served}


@flow(name="mlops-monitor", log_prints=False, validate_parameters=False)
def monitor_flow(config: dict[str, Any], project: str, state_dir: str, trigger: str = "schedule") -> dict[str, Any]:
    """Level 4: judge each closed window of the champion's served traffic, once.

    A window that breaks the data constraints (garbage: bad types, nulls, out of bounds, unseen categories)
    is quarantined and raises no drift. Otherwise drift is scored per column against the champion's reference
    profile; a DRIFT column emits mlops.drift.detected (again only after `monitoring.drift.repeat_after_windows`
    windows of this version), which the retraining automation acts on.
    """
    return monitor(_config(config), state_dir, trigger)


@task(name="monitor")
def monitor(cfg: Config, state_dir: str, trigger: str) -> dict[str, Any]:
    import json

    from mlops.monitoring import make_profiler, windows
    from mlops.monitoring._batch import quarantine, render_failures
    from mlops.plan._levels import DRIFT_DETECTED, TRAFFIC_QUARANTINED, model_resource
    from mlops.registry import Registry, write_atomic

    state = Path(state_dir)
    reg = Registry(state / "registry")
    version = reg.aliases(cfg.name).get("champion")
    if version is None:
        return {"judged": []}
    ref_path = reg.get(cfg.name, version).file("reference_profile.bin")
    base = state / "monitoring" / cfg.name / str(version)
    ledger_path = base / "judged.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {"windows": {}, "drift_event": None}
    # Closed windows not judged yet; most polls find none and stop here, before whylogs is even imported.
    pending = [(start, path) for start, path in windows(base / "windows")
               if str(start) not in ledger["windows"] and start + cfg.monitoring.window_s <= time.time()]
    if not pending or not ref_path.is_file():
        return {"judged": [], "version": version}
    profiler = make_profiler(cfg.monitoring.flavor)
    reference = profiler.read(ref_path)
    judged = []
    for start, path in pending:
        view = profiler.read(path)
        report = profiler.validate_profile(view, reference, cfg.data, cfg.monitoring, required=cfg.data.features)
        verdict: dict[str, Any] = {"rows": profiler.rows(view)}
        if not report.ok:
            problems = [render_failures(report, f"served traffic of {cfg.name}@{version}, window {start}")]
            where = quarantine(state, cfg.name, f"window-{version}-{start}", path, problems, report,
                               version=version, window=start)
            verdict.update(outcome="quarantined", quarantine=str(where))
            _emit(TRAFFIC_QUARANTINED, model_resource(cfg), {"version": version, "window": start,
                                                             "quarantine": str(where), "problems": problems})
            _log_run(cfg, state_dir, "mlops-monitor", trigger, steps=["monitor"], outcome="quarantined traffic",
                     version=version, window=start, reasons=problems)
        else:
            scores = profiler.drift(reference, view, cfg.data.features, cfg.monitoring.drift)
            drifted = sorted(c for c, d in scores.items() if d.category == "DRIFT")
            verdict.update(outcome="drift" if drifted else "ok", drifted=drifted,
                           scores={c: d.score for c, d in scores.items()})
            last = ledger["drift_event"]
            if drifted and (last is None or start - last >= cfg.monitoring.drift.repeat_after_windows
                            * cfg.monitoring.window_s):
                ledger["drift_event"] = start
                _emit(DRIFT_DETECTED, model_resource(cfg), {"model": cfg.name, "version": version, "window": start,
                                                            "drifted": drifted, "scores": verdict["scores"]})
                _log_run(cfg, state_dir, "mlops-monitor", trigger, steps=["monitor"], outcome="drift detected",
                         version=version, window=start, drifted=drifted,
                         scores={c: round(v, 3) for c in drifted if (v := verdict["scores"][c]) is not None})
        ledger["windows"][str(start)] = verdict
        judged.append({"window": start, **verdict})
        write_atomic(ledger_path, json.dumps(ledger, indent=2))
    return {"version": version, "judged": judged}


@task(name="gate")
def gate(spec: Any, candidate: dict[str, float], champion: dict[str, float] | None) -> dict[str, Any]:
    from mlops.flows._gate import judge

    return judge(spec, candidate, champion)


MANUAL_STEPS = ("ingest", "validate", "train", "evaluate", "register")


def _work(state_dir: str, name: str) -> Path:
    return Path(state_dir) / "work" / f"{name}.json"


def _end_open_runs(status: RunStatus) -> None:
    while _open_runs:
        _open_runs.popitem()[1].end_run(status)


def _reopen_run(cfg: Config, state_dir: str, trained: dict[str, Any]) -> None:
    """Level 0: each step is a process of its own, so evaluate and register reopen the run train left open."""
    run_id = trained["tracking_run_id"]
    tracker = make_tracker(cfg.tracking, Path(state_dir))
    try:
        tracker.resume_run(run_id)
    except LookupError as exc:  # e.g. tracking.* changed since train: the registry still keeps the metrics
        console.print(f"  ! tracking run {run_id} of `mlops run train` not found <tracking.flavor="
                      f"{cfg.tracking.flavor}>, so nothing is logged to it: {exc}", markup=False)
        return
    _open_runs[run_id] = tracker


@flow(name="mlops-step", log_prints=False, validate_parameters=False)
def step_flow(config: dict[str, Any] | Config, project: str, state_dir: str, step: str) -> dict[str, Any]:
    """Level 0: one step by hand (`mlops run <step>`); each step reads what the previous one left."""
    import json

    from mlops.errors import MlopsError
    from mlops.registry import Registry, write_atomic

    cfg = _config(config)
    wp = _work(state_dir, cfg.name)
    work = json.loads(wp.read_text()) if wp.is_file() else {}
    needs = {"validate": "dataset", "train": "validated", "evaluate": "trained", "register": "metrics"}
    before = {"dataset": "ingest", "validated": "validate", "trained": "train", "metrics": "evaluate"}
    if step in needs and needs[step] not in work:
        raise MlopsError(f"`mlops run {step}` needs the output of `{before[needs[step]]}`: run `mlops run "
                         f"{before[needs[step]]} recipe={cfg.name}` first.")
    result: dict[str, Any]
    if step == "ingest":
        work = {"dataset": _run("ingest", ingest, cfg, project, state_dir)}
        result = work["dataset"]
    elif step == "validate":
        result = _run("validate", validate, cfg, work["dataset"], state_dir)
        _record_snapshot(state_dir, cfg.name, work["dataset"], "manual")
        work["validated"] = True
    elif step == "train":
        try:
            work["trained"] = result = _run("train", train, cfg, work["dataset"], state_dir, False)
        except BaseException:
            _end_open_runs("FAILED")
            raise
        while _open_runs:  # left open: `mlops run evaluate` and `register` log into it, and register ends it
            _open_runs.popitem()[1].leave_run()
        work.pop("metrics", None)
    elif step == "evaluate":
        _reopen_run(cfg, state_dir, work["trained"])
        try:
            work["metrics"] = result = _run("evaluate", evaluate, cfg, work["dataset"], work["trained"])
        except BaseException:
            _end_open_runs("FAILED")
            raise
        while _open_runs:
            _open_runs.popitem()[1].leave_run()
    else:
        _reopen_run(cfg, state_dir, work["trained"])
        try:  # register logs lineage.json into the run and ends it FINISHED
            result = _run("register", register, cfg, work["dataset"], work["trained"], work["metrics"], state_dir)
        finally:
            _end_open_runs("FAILED")
        if result["new"]:
            Registry(Path(state_dir) / "registry").set_status(cfg.name, result["version"], "registered")
    write_atomic(wp, json.dumps(work, indent=2, default=str))
    _log_run(cfg, state_dir, "mlops-step", "manual", steps=[step],
             **({"version": result["version"]} if step == "register" else {}))
    return result
