"""The pipeline's steps as plain functions over a Stack and typed artifacts: runnable without Prefect.

The Prefect flows (mlops/flows) wrap these in tasks for caching, retries and the UI; a benchmark or a test
calls them directly::

    stack = Stack(cfg, project)
    snapshot = ingest(stack)
    validate(stack, snapshot)
    trained = train(stack, snapshot)
    metrics = evaluate(stack, snapshot, trained)
    version = register(stack, snapshot, trained, metrics)
    served = deploy(stack, export(stack, version), by="a script")

Tracking: `train` opens a run in the stack's tracker and leaves it open in this process (`open_runs`);
`evaluate` logs the test metrics into it and `register` the lineage, then ends it. `end_open_runs` closes
whatever a failure left open.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops._atomic import atomic_path, disk_full_is_an_error, write_atomic
from mlops._names import DRIFT_DETECTED, TRAFFIC_QUARANTINED
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
from mlops.errors import DataError, MlopsError
from mlops.plan import Gate
from mlops.recipe.keys import config_hash, training_key
from mlops.recipe.schema import ImageData
from mlops.stack import Stack

Emit = Callable[[str, dict[str, Any]], None]

# Tracking runs opened by `train` in this process, by run id, until `register` (or a failure) ends them.
open_runs: dict[str, Any] = {}


def end_open_runs(status: str) -> None:
    drop_split()
    while open_runs:
        open_runs.popitem()[1].end_run(status)


def leave_open_runs() -> None:
    """Level 0: this process ends, the run goes on (`mlops run evaluate` reopens it)."""
    while open_runs:
        open_runs.popitem()[1].leave_run()


def reopen_run(stack: Stack, run_id: str) -> bool:
    """Reopen a run a previous process left open; False (nothing logged to it) if the tracker lost it."""
    tracker = stack.tracker()
    try:
        tracker.resume_run(run_id)
    except LookupError:
        return False
    open_runs[run_id] = tracker
    return True


# ---------------------------------------------------------------- data
def ingest(stack: Stack, full: bool = False) -> DatasetSnapshot:
    """Read the data source, keep the columns the recipe uses, and snapshot them (once per content).

    With `data.incremental` (level 1+) only the rows past the current chain's watermark are read, and the
    snapshot holds just those; none past it gives back the chain's latest snapshot, `new_rows` 0. `full` reads
    everything and starts a new chain (`mlops data refresh --full`)."""
    from mlops.data import read_after, read_frame, release_arrow_memory, repair_frame, watermark

    cfg = stack.cfg
    inc = cfg.data.incremental if incremental(stack) else None
    last = None if inc is None or full else (chain(stack) or [None])[-1]
    if inc is None:
        frame = read_frame(cfg.data, stack.project, cache_dir=stack.layout.cache, write_cache=True)
    else:
        from mlops.data import bound

        after = bound(last["incremental"]["watermark"], last["incremental"]["type"]) if last else None
        frame = read_after(cfg.data, stack.project, after)
    release_arrow_memory()  # the read's buffers, before the fingerprint and the snapshot's write allocate theirs
    used = list(cfg.data.columns)
    used = used if inc is None or inc.column in used else [*used, inc.column]
    if list(frame.columns) != used:  # a source that read just these, in this order, needs no copy of the frame
        frame = frame[used]
    about: dict[str, Any] = {}
    if inc is not None:
        if last is not None and not len(frame):
            return _snapshot_of(last, new_rows=0)
        mark, kind = watermark(frame, inc.column) if len(frame) else (None, "")
        about = {"column": inc.column, "watermark": mark, "type": kind,
                 "after": last["incremental"]["watermark"] if last else None,
                 "chain": last["incremental"]["chain"] if last else uuid.uuid4().hex[:12], "new_rows": len(frame)}
    # An explicit data.checks.non_finite=drop|clip repairs the rows before they are snapshotted, so no split
    # ever sees an unusable value; with `reject` (the default) validate reports them instead.
    frame, repairs = repair_frame(frame, cfg.data, cfg.model.task)
    fp, path = _snapshot_file(stack, frame)
    rows = len(frame)
    del frame
    release_arrow_memory()
    return DatasetSnapshot(fingerprint=fp, path=str(path), rows=rows, key=training_key(cfg, fp),
                           repairs=repairs, incremental=about)


def _snapshot_file(stack: Stack, frame: Any) -> tuple[str, Path]:
    """The frame's content fingerprint and its Parquet snapshot, written once per content (atomically)."""
    from mlops.data import fingerprint, write_snapshot

    fp = fingerprint(frame)
    path = stack.layout.snapshot(stack.cfg.name, fp)
    if not path.exists():
        with atomic_path(path) as tmp:  # straight to the file, a row group at a time: no copy of the whole frame
            write_snapshot(frame, tmp)
    return fp, path


def incremental(stack: Stack) -> bool:
    """Whether ingest reads incrementally: `data.incremental` is set and the level refreshes data (1+)."""
    return stack.cfg.data.incremental is not None and stack.cfg.maturity.level >= 1


def chain(stack: Stack, upto: str = "") -> list[dict[str, Any]]:
    """The recorded snapshots of a watermark chain, oldest first: its full read and the incremental reads after
    it. The chain of the snapshot `upto` (a fingerprint), up to it; without one, the latest chain."""
    entries = [d for d in validated_snapshots(stack).values() if d.get("incremental")]
    if upto:
        entries = entries[:[d["fingerprint"] for d in entries].index(upto) + 1]
    if not entries:
        return []
    cid = entries[-1]["incremental"]["chain"]
    return [d for d in entries if d["incremental"]["chain"] == cid]


def _snapshot_of(d: dict[str, Any], **incremental: Any) -> DatasetSnapshot:
    return DatasetSnapshot(**{k: d[k] for k in ("fingerprint", "path", "rows", "key")}, repairs=d.get("repairs", {}),
                           incremental={**d.get("incremental", {}), **incremental})


def training_data(stack: Stack, snapshot: DatasetSnapshot) -> DatasetSnapshot:
    """What `train` fits on: with `data.incremental`, the `data.window` over the chain up to `snapshot` (one
    content-hashed snapshot, the ids and watermarks of the snapshots in it recorded); otherwise `snapshot`. With
    `model.init_from: champion` the champion's version joins the training key, since training starts from it."""
    from mlops.data import window_frame

    cfg = stack.cfg
    training = snapshot
    if snapshot.incremental and snapshot.fingerprint in validated_snapshots(stack):
        inc, window = cfg.data.incremental, cfg.data.window
        assert inc is not None
        entries = chain(stack, snapshot.fingerprint)
        if window is not None and window.rows is not None:  # only the latest snapshots that hold the N rows
            total, start = 0, len(entries)
            while start > 0 and total < window.rows:
                start -= 1
                total += entries[start]["rows"]
            entries = entries[start:]
        frame, used = window_frame([(d, _frame_at(d["path"])) for d in entries], inc.column, window)
        features = list(cfg.data.columns)
        frame = frame[features]
        if len(frame) < cfg.data.checks.min_rows:
            raise DataError(f"the training window of recipe {cfg.name!r} has {len(frame)} rows, fewer than "
                            f"data.checks.min_rows={cfg.data.checks.min_rows} (data.window="
                            f"{window.model_dump(exclude_none=True) if window else 'all'}, over {len(used)} "
                            "snapshot(s)). Hint: widen data.window, or wait for more rows.")
        fp, path = _snapshot_file(stack, frame)
        about = {"column": inc.column, "rule": window.model_dump(exclude_none=True) if window else "all",
                 "chain": snapshot.incremental["chain"], "rows": len(frame), "snapshots": used}
        training = DatasetSnapshot(fingerprint=fp, path=str(path), rows=len(frame), key=training_key(cfg, fp),
                                   window=about)
    if cfg.model.init_from == "none":
        return training
    return training.model_copy(update=stack.warm_start(training.fingerprint, training.key))


def _frame(snapshot: DatasetSnapshot) -> Any:
    return _frame_at(snapshot.path)


def _frame_at(path: str) -> Any:
    from mlops.data import read_snapshot

    return read_snapshot(path)


def validate(stack: Stack, snapshot: DatasetSnapshot) -> ValidatedData:
    """The data-validation gate: the recipe's checks, then the monitor's constraints against the champion's
    reference profile. A failing batch is quarantined (moved out of the datasets, with a report) and never
    trained on: raises DataError."""
    from mlops.monitoring._batch import quarantine

    cfg = stack.cfg
    frame = _frame(snapshot)
    # New rows on top of a chain are checked as rows; the row count and classes are the training window's.
    delta = snapshot.incremental.get("after") is not None
    report, batch, problems = check_frame(stack, frame[cfg.data.columns] if
                                          snapshot.incremental else frame, f"the batch {snapshot.path}", delta=delta)
    del frame
    _release_memory()
    if problems:
        where = quarantine(stack.state_dir, cfg.name, snapshot.fingerprint, Path(snapshot.path), problems, batch,
                           source=cfg.data.describe(), **({"bad_files": report.bad_files} if report.bad_files else {}))
        raise DataError(f"the data of recipe {cfg.name!r} failed validation and was quarantined in {where} "
                        f"(report.json there); training will not use it. Fix the source and let it be ingested "
                        f"again.\n" + "\n".join(problems))
    return ValidatedData(snapshot=snapshot, rows=report.rows, null_fractions=report.null_fractions)


def check_frame(stack: Stack, frame: Any, source: str, with_profile: bool | None = None,
                delta: bool = False) -> tuple[Any, Any, list[str]]:
    """The one data gate, shared by the validate step and `mlops validate`: the recipe's checks (validate_frame:
    columns, rows, types, nulls, target, non-finite values), then the constraints against the champion's
    reference profile. Returns (ValidationReport, BatchReport or None, every problem as text); writes nothing.
    `with_profile` None: the constraints run when the stack has a monitor (as the validate step does)."""
    from mlops.data import validate_frame
    from mlops.monitoring._batch import check_batch, render_failures

    cfg = stack.cfg
    report = validate_frame(frame, cfg.data, cfg.model.task, delta=delta)
    problems = list(report.problems)
    if isinstance(cfg.data, ImageData) and len(frame) and (classes := champion_classes(stack)) is not None:
        from mlops.data._images import unseen_labels

        problems += unseen_labels(frame, cfg.data.target, classes)  # a class folder the champion never saw
    batch = None
    if (stack.monitor is not None if with_profile is None else with_profile) and len(frame):
        batch = check_batch(cfg, frame, reference_profile(stack)[1], stack.monitor)
        if not batch.ok:
            problems.append(render_failures(batch, source))
    return report, batch, problems


def champion_classes(stack: Stack) -> list[Any] | None:
    """The classes the champion was trained on (from its checkpoint), or None without a champion."""
    store, name = stack.model_store, stack.cfg.name
    champion = store.aliases(name).get("champion")
    if champion is None:
        return None
    import torch  # for import cost: only an image recipe with a champion reads a checkpoint here

    saved = torch.load(store.get(name, champion).file("model.ckpt"), map_location="cpu", weights_only=False)
    return saved.get("hyper_parameters", {}).get("classes")


def reference_profile(stack: Stack) -> tuple[int | None, Any | None]:
    """(version, profile): the champion's training-data profile (else the latest version's), if any."""
    store, name = stack.model_store, stack.cfg.name
    versions = store.versions(name)
    if not versions:
        return None, None
    champion = store.aliases(name).get("champion")
    mv = store.get(name, champion) if champion is not None else versions[-1]
    path = mv.file("reference_profile.bin")
    if not path.is_file():
        return mv.version, None
    return mv.version, batch_profiler(stack).read(path)


def batch_profiler(stack: Stack) -> Any:
    """The monitor's profiler; with `monitoring: {flavor: none}` the default monitor flavor's, because the data
    gate's constraints run whatever serving traffic is watched with."""
    from mlops.monitoring import make_profiler
    from mlops.recipe.schema import SECTIONS

    return stack.monitor or make_profiler(str(SECTIONS["monitoring"][2]))


def validated_snapshots(stack: Stack) -> dict[str, dict[str, Any]]:
    """Validated dataset snapshots by fingerprint, in the order they were recorded."""
    p = stack.layout.snapshot_index(stack.cfg.name)
    return json.loads(p.read_text()) if p.is_file() else {}


def record_snapshot(stack: Stack, snapshot: DatasetSnapshot, trigger: str) -> bool:
    """Record a validated snapshot; False if it was already recorded (nothing new)."""
    index = validated_snapshots(stack)
    if snapshot.fingerprint in index and (snapshot.incremental.get("chain") ==
                                          index[snapshot.fingerprint].get("incremental", {}).get("chain")):
        return False
    index.pop(snapshot.fingerprint, None)  # a full read of the same rows again starts a new chain: moved last
    index[snapshot.fingerprint] = {**snapshot.model_dump(), "validated_at": time.time(), "trigger": trigger}
    write_atomic(stack.layout.snapshot_index(stack.cfg.name), json.dumps(index, indent=2))
    return True


def latest_snapshot(stack: Stack, path: str = "") -> DatasetSnapshot:
    """The validated snapshot at `path`, or the latest one."""
    index = validated_snapshots(stack)
    found = [d for d in index.values() if d["path"] == path] if path and "{{" not in path else []
    if not found and not index:
        raise DataError(f"recipe {stack.cfg.name!r} has no validated dataset snapshot yet: run `mlops run ingest "
                        f"recipe={stack.cfg.name}` and `mlops run validate recipe={stack.cfg.name}` first.")
    d = found[0] if found else list(index.values())[-1]
    return _snapshot_of(d)


# ---------------------------------------------------------------- model
# The split of the snapshot that train, evaluate and register use in turn, read once per process: (snapshot path,
# data config, task) -> Split. Snapshots are content-addressed, so a path names one content. `register` drops it.
_splits: dict[tuple[str, str, str], Any] = {}
# The training rows' monitor profile, taken by `train` before the fit frees those rows (Split.consume_train), for
# `register`'s reference profile; same key as _splits.
_train_profiles: dict[tuple[str, str, str], Any] = {}


def _split_key(stack: Stack, snapshot: DatasetSnapshot) -> tuple[str, str, str]:
    return (snapshot.path, stack.cfg.data.model_dump_json(), stack.cfg.model.task)


def _split(stack: Stack, snapshot: DatasetSnapshot) -> Any:
    from mlops.data import read_snapshot
    from mlops.training import split_frame, split_positions

    data, task = stack.cfg.data, stack.cfg.model.task
    key = _split_key(stack, snapshot)
    if key not in _splits:
        _splits.clear()  # one split at a time: the one before is not needed any more
        _train_profiles.clear()
        # The positions from the target column alone, before the frame is read: a stratified split of 10M rows
        # allocates ~0.85 GB, which would otherwise sit on top of the whole frame (bench/README.md, "bench: scale").
        target = read_snapshot(snapshot.path, [data.target])
        positions = None
        if data.target in target.columns and not target[data.target].isna().any():
            positions = split_positions(target[data.target], data, task)
        del target
        _splits[key] = split_frame(_frame(snapshot), data, task, consume=True, positions=positions)
        _release_memory()  # the whole frame's, read and freed
    return _splits[key]


def drop_split() -> None:
    """Forget the split `_split` kept (its frames are freed with it)."""
    _splits.clear()
    _train_profiles.clear()
    _release_memory()


_frozen = False


def _freeze_libraries() -> None:
    """Once per process, when the training libraries are loaded: move every object alive now (mostly the
    modules, classes and functions of the training, data, monitoring and orchestration libraries: ~700k
    objects) out of the cyclic collector's reach. Each full collection in this process then walks only what was made since
    (a fit's, a step's), not all of them (~0.3 s each, several per `up`), and neither does the interpreter's exit
    (1.5-2 s). Reference counting still frees frozen objects; only a reference cycle among them stays until the
    process ends. Once: a long process (pytest, a runner) does not freeze what later calls leave behind."""
    global _frozen
    if not _frozen:
        import gc

        gc.freeze()
        _frozen = True


def _release_memory(collect: bool = False) -> None:
    """Hand back what the step freed: Arrow's pool keeps freed buffers (release_arrow_memory); with `collect`,
    objects in reference cycles first (a Lightning Trainer and the module, loaders and tensors it holds are
    freed by the cyclic collector, whenever it runs: maybe during the next step, at its peak)."""
    from mlops.data import release_arrow_memory

    if collect:
        import gc

        gc.collect()
    release_arrow_memory()


def train(stack: Stack, snapshot: DatasetSnapshot, progress: bool = False) -> TrainedModel:
    """Fit the model on the snapshot's train split; the run stays open in `open_runs` for evaluate/register."""
    from dataclasses import replace

    from mlops.training import fit

    _freeze_libraries()
    cfg = stack.cfg
    out = stack.layout.training(cfg.name, snapshot.key)
    tracker = stack.tracker()
    run_id = tracker.start_run(f"{cfg.name}-{snapshot.key[:8]}", tags={"mlops.model": cfg.name,
                                                                       "mlops.key": snapshot.key})
    open_runs[run_id] = tracker
    tracker.log_params(cfg.model_dump(mode="json", include={"data", "model", "compute", "seed"}))
    init = None
    if snapshot.warm_from is not None:  # model.init_from: champion (see training_data)
        init = stack.model_store.get(cfg.name, snapshot.warm_from).file("model.ckpt")
    split = _split(stack, snapshot)
    if not len(split.train.columns):  # a fit before, in this process, freed the training rows: read them again
        drop_split()
        split = _split(stack, snapshot)
    if stack.monitor is not None and not (out / "reference_profile.bin").exists():
        _train_profiles[_split_key(stack, snapshot)] = stack.monitor.profile(split.train)  # for register
    # The fit may free the training rows as it encodes them (at 10M rows 0.73 GB less while it trains): evaluate
    # and register need only the other splits and the profile above (bench/README.md, "bench: scale").
    result = fit(cfg, replace(split, consume_train=True), out, loggers=[tracker.lightning_logger()],
                 progress=progress, project=Path(stack.project), init_from=init)
    _release_memory(collect=True)
    return TrainedModel(dir=str(out), checkpoint=str(result.checkpoint), val_metrics=result.val_metrics,
                        epochs=result.epochs, tracking_run_id=run_id)


def evaluate(stack: Stack, snapshot: DatasetSnapshot, trained: TrainedModel) -> TestMetrics:
    """The test split's metrics of the trained checkpoint, logged into its tracking run when it is open."""
    from mlops.training import evaluate as test_metrics
    from mlops.training import load_module

    metrics = test_metrics(stack.cfg, load_module(Path(trained.checkpoint), stack.cfg.model.flavor), _split(stack, snapshot))
    if (tracker := open_runs.get(trained.tracking_run_id)) is not None:
        tracker.log_metrics(metrics)
    return TestMetrics(values=metrics)


def register(stack: Stack, snapshot: DatasetSnapshot, trained: TrainedModel, metrics: TestMetrics,
             run_id: str = "") -> RegisteredVersion:
    """An immutable version in the model store, with its lineage; ends the tracking run (FINISHED).

    The same training key registered before gives that version back (`new=False`). `run_id` names the run that
    registers (the Prefect flow run); without one a fresh id is used."""
    cfg = stack.cfg
    # No version with a non-finite metric exists, at any maturity level: a NaN loss compares false with every
    # floor and ceiling, so the gate alone would let it through.
    require_finite({**trained.val_metrics, **metrics.values}, f"{cfg.name} (training key {snapshot.key[:12]})")
    run_id = run_id or f"local-{uuid.uuid4().hex}"
    train_dir = Path(trained.dir)
    files = {"model.ckpt": Path(trained.checkpoint), "history.json": train_dir / "history.json"}
    if stack.monitor is not None:
        files["reference_profile.bin"] = _reference_profile(stack, snapshot, train_dir, Path(trained.checkpoint))
    lineage = {
        "key": snapshot.key,
        "config_hash": config_hash(cfg),
        "data_fingerprint": snapshot.fingerprint,
        "data_snapshot": snapshot.path,
        "metrics": {**trained.val_metrics, **metrics.values},
        "epochs": trained.epochs,
        "tracking": {"flavor": cfg.tracking.flavor, "run_id": trained.tracking_run_id},
        "components": cfg.components,
        "flow_run_id": run_id,
        **({"data_repairs": snapshot.repairs} if snapshot.repairs else {}),
        **({"data_window": snapshot.window} if snapshot.window else {}),
        **({"warm_start": {"from_version": snapshot.warm_from}} if cfg.model.init_from != "none" else {}),
    }
    module_lineage = train_dir / "module.json"  # written by fit for a team's own module (model.flavor=lightning)
    if module_lineage.is_file():
        lineage["module"] = json.loads(module_lineage.read_text())
        files["module.json"] = module_lineage
    compute = train_dir / "compute.json"  # written by fit: the strategy and the ranks that trained
    if compute.is_file():
        lineage["compute"] = json.loads(compute.read_text())
    drop_split()  # the last step that reads the split
    mv = stack.model_store.register(cfg.name, files, lineage)
    if (tracker := open_runs.pop(trained.tracking_run_id, None)) is not None:
        tracker.log_dict(mv.lineage, "lineage.json")
        tracker.end_run("FINISHED")
    return RegisteredVersion(model=mv.model, version=mv.version, path=str(mv.path),
                             new=mv.lineage["flow_run_id"] == run_id)


def require_finite(metrics: dict[str, float], what: str) -> None:
    """Raise MlopsError naming each metric that is NaN or infinite."""
    import math

    bad = {k: v for k, v in sorted(metrics.items()) if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise MlopsError(f"the model {what} has non-finite metrics ({shown}); it is not registered and nothing is "
                         "served. Hint: check the data for extreme values (data.checks.non_finite) and lower "
                         "model.lr.")


def _reference_profile(stack: Stack, snapshot: DatasetSnapshot, train_dir: Path, checkpoint: Path) -> Path:
    """The training split's profile, with the model's served outputs on the validation split (and a tensor
    model's input summaries) merged in: the reference that input and output drift are measured against."""
    path = train_dir / "reference_profile.bin"
    if not path.exists():
        monitor = stack.monitor
        assert monitor is not None
        split = _split(stack, snapshot)
        profile = _train_profiles.pop(_split_key(stack, snapshot), None)
        if profile is None:  # train ran in another process (or was cached): these rows were not consumed here
            assert len(split.train.columns), "the training rows were freed before their profile was taken"
            profile = monitor.profile(split.train)
        if len(split.val):
            profile = monitor.merge(profile, monitor.profile(_served_reference(stack, split.val, checkpoint)))
        monitor.write(profile, path)  # atomic: see Profiler.write
    return path


# Rows of the validation split that the reference of served outputs is predicted on, at most: plenty for a
# Hellinger distance over 30 bins, and seconds of torch whatever the data's size.
REFERENCE_PREDICTIONS_MAX = 20_000


def _served_reference(stack: Stack, val: Any, checkpoint: Path) -> Any:
    """The summaries (mlops.monitoring._summaries) of what the model answers on `val`, as a frame to profile."""
    import pandas as pd

    from mlops.monitoring._summaries import served_columns
    from mlops.serving._export import served_predictions
    from mlops.training import load_module

    if len(val) > REFERENCE_PREDICTIONS_MAX:
        val = val.sample(REFERENCE_PREDICTIONS_MAX, random_state=stack.cfg.data.split.seed)
    signature, batches = served_predictions(load_module(checkpoint, stack.cfg.model.flavor), val)
    return pd.concat([pd.DataFrame(served_columns(signature, inputs, outputs)) for inputs, outputs in batches],
                     ignore_index=True)


# ---------------------------------------------------------------- release
def judge(spec: Gate, candidate: dict[str, float], champion: dict[str, float] | None,
          champion_version: int | None = None) -> GateVerdict:
    """The level-3 gate as a pure function: every failed condition is a reason. With no champion yet only the
    absolute floors and ceilings apply."""
    import math

    reasons = [f"{name}={value} is not a finite number" for name, value in sorted(candidate.items())
               if not math.isfinite(value)]
    for name, floor in sorted(spec.floors.items()):
        if candidate[name] < floor:
            reasons.append(f"{name}={candidate[name]:.4f} is below the floor {floor:g} <maturity.gate.floors.{name}>")
    for name, ceiling in sorted(spec.ceilings.items()):
        if candidate[name] > ceiling:
            reasons.append(f"{name}={candidate[name]:.4f} is above the ceiling {ceiling:g} "
                           f"<maturity.gate.ceilings.{name}>")
    m = spec.metric
    best = champion.get(m) if champion else None
    if best is not None:
        gain = candidate[m] - best if spec.direction == "maximize" else best - candidate[m]
        if gain < spec.min_improvement:
            reasons.append(f"{m}={candidate[m]:.4f} does not beat the champion's {best:.4f} by at least "
                           f"{spec.min_improvement:g} ({spec.direction}) <maturity.gate.min_improvement>")
    return GateVerdict(passed=not reasons, reasons=reasons, metric=m, candidate=candidate[m], champion=best,
                       champion_version=champion_version)


def hold_to_floors(stack: Stack, spec: Gate, version: RegisteredVersion, metrics: TestMetrics) -> GateVerdict:
    """A version `up` would serve must have finite metrics and reach the floors and ceilings of `spec` (the
    recipe's `maturity.gate` at level 0), whatever the champion. A version that does not is marked rejected with
    the reasons and GateRejected is raised: nothing is served."""
    from mlops.errors import GateRejected

    _gate_metrics_logged(spec, metrics)
    verdict = judge(spec, metrics.values, None)
    if not verdict.passed:
        stack.model_store.set_status(stack.cfg.name, version.version, "rejected", verdict.reasons)
        raise GateRejected(f"{stack.cfg.name}@{version.version} is not served: " + "; ".join(verdict.reasons)
                           + ". It stays registered, marked rejected. Fix the data or the model, or change the "
                           "bounds in the recipe's maturity.gate.")
    return verdict


def gate(stack: Stack, spec: Gate, version: RegisteredVersion, metrics: TestMetrics) -> GateVerdict:
    """Judge a candidate against the champion in the model store, and record the verdict as its status."""
    store = stack.model_store
    _gate_metrics_logged(spec, metrics)
    champion = store.aliases(stack.cfg.name).get("champion")
    champion_metrics = store.get(stack.cfg.name, champion).lineage["metrics"] if champion else None
    verdict = judge(spec, metrics.values, champion_metrics, champion)
    if verdict.passed:
        store.set_status(stack.cfg.name, version.version, "registered")
    else:
        store.set_status(stack.cfg.name, version.version, "rejected", verdict.reasons)
    return verdict


def _gate_metrics_logged(spec: Gate, metrics: TestMetrics) -> None:
    """A team's module logs its own test metrics: a gate on one it never logs is a config error, not a KeyError."""
    from mlops.errors import ConfigError, Problem

    named = [("maturity.gate.metric", spec.metric), *((f"maturity.gate.floors.{k}", k) for k in spec.floors),
             *((f"maturity.gate.ceilings.{k}", k) for k in spec.ceilings)]
    logged = ", ".join(sorted(metrics.values)) or "nothing"
    problems = [Problem(key, f"the gate compares {name!r}, which the model's test_step never logs; it logs: "
                        f"{logged}", "", "gate on a logged metric, or log it in test_step")
                for key, name in named if name not in metrics.values]
    if problems:
        raise ConfigError(problems)


def export(stack: Stack, version: RegisteredVersion) -> ExportedModel:
    """What serving the version needs (model.onnx + signature and the server's package), once per version."""
    with disk_full_is_an_error(stack.state_dir, f"the export of {version.model} version {version.version}"):
        return stack.server.export(version)


def deploy(stack: Stack, exported: ExportedModel, by: str) -> ServedModel:
    """Serve the exported version (no failed request on the way), then move the champion alias to it.

    A full disk while publishing (DiskFull) leaves the champion as it was, served and in the model store."""
    with disk_full_is_an_error(stack.state_dir, f"{exported.model} version {exported.version} for serving"):
        served = stack.server.deploy(exported)
    stack.model_store.promote(stack.cfg.name, exported.version, by=by)
    return served


def promote(stack: Stack, version: int, by: str, force: bool = False) -> ServedModel:
    """A person's deploy (level 0) or promotion (level 2): export once, serve, make it the champion."""
    from mlops.errors import RegistryError

    store = stack.model_store
    mv = store.get(stack.cfg.name, version)
    status = store.statuses(stack.cfg.name)[version]
    if status["status"] == "rejected" and not force:
        raise RegistryError(f"{mv.ref} was rejected by the gate: {'; '.join(status['reasons'])}. "
                            "Promote it anyway with --force.")
    store.verify(mv)
    stack.server.start()
    ref = RegisteredVersion(model=mv.model, version=mv.version, path=str(mv.path), new=False)
    return deploy(stack, export(stack, ref), by=by)


def rollback(stack: Stack) -> tuple[int, int, ServedModel]:
    """Serve the previous champion again and point the champion alias back to it: (from, to, served)."""
    from mlops.errors import RegistryError

    store, name = stack.model_store, stack.cfg.name
    history = store.champions(name)
    if len(history) < 2:
        raise RegistryError(f"model {name!r} has no previous champion to roll back to "
                            f"(champion history: {[e['version'] for e in history] or 'empty'}).")
    previous = store.get(name, history[-2]["version"])
    stack.server.start()
    ref = RegisteredVersion(model=previous.model, version=previous.version, path=str(previous.path), new=False)
    served = stack.server.deploy(export(stack, ref))
    frm, to = store.rollback(name)
    return frm, to, served


# ---------------------------------------------------------------- monitoring
def monitor(stack: Stack, trigger: str, emit: Emit = lambda event, payload: None,
            log: Callable[..., None] = lambda **entry: None) -> dict[str, Any]:
    """Judge each closed window of the champion's served traffic, once.

    A window that breaks the data constraints (garbage: bad types, nulls, out of bounds, unseen categories)
    is quarantined and raises no drift. Otherwise drift is scored per column against the champion's reference
    profile; a DRIFT column emits mlops.drift.detected (again only after `monitoring.drift.repeat_after_windows`
    windows of this version), which the retraining automation acts on.
    """
    from mlops.monitoring import windows
    from mlops.monitoring._batch import quarantine, render_failures
    from mlops.monitoring._summaries import split_columns

    cfg, layout = stack.cfg, stack.layout
    version = stack.model_store.aliases(cfg.name).get("champion")
    if version is None or stack.monitor is None:
        return {"judged": []}
    ref_path = stack.model_store.get(cfg.name, version).file("reference_profile.bin")
    ledger_path = layout.judged(cfg.name, version)
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {"windows": {}, "drift_event": None}
    # Closed windows not judged yet; most polls find none and stop here, before the profiler reads anything.
    pending = [(start, path) for start, path in windows(layout.windows(cfg.name, version))
               if str(start) not in ledger["windows"] and start + cfg.monitoring.window_s <= time.time()]
    if not pending or not ref_path.is_file():
        return {"judged": [], "version": version}
    profiler = stack.monitor
    reference = profiler.read(ref_path)
    # Input columns (the recipe's features, or a tensor model's summaries) and the served outputs' summaries.
    inputs, outputs = split_columns(profiler.columns(reference), cfg.data.features)
    judged = []
    for start, path in pending:
        try:
            view = profiler.read(path)
            report = profiler.validate_profile(view, reference, cfg.data, cfg.monitoring,
                                               required=[c for c in inputs if c in cfg.data.features])
            scores = profiler.drift(reference, view, inputs + outputs, cfg.monitoring.drift) if report.ok else {}
        except Exception as exc:  # one window that cannot be read or scored is reported and skipped, once
            reason = f"{type(exc).__name__}: {exc}"
            log(outcome="skipped traffic window", version=version, window=start, reasons=[reason])
            ledger["windows"][str(start)] = {"rows": None, "outcome": "skipped", "reason": reason}
            judged.append({"window": start, **ledger["windows"][str(start)]})
            write_atomic(ledger_path, json.dumps(ledger, indent=2))
            continue
        verdict: dict[str, Any] = {"rows": profiler.rows(view)}
        if not report.ok:
            problems = [render_failures(report, f"served traffic of {cfg.name}@{version}, window {start}")]
            where = quarantine(stack.state_dir, cfg.name, f"window-{version}-{start}", path, problems, report,
                               version=version, window=start)
            verdict.update(outcome="quarantined", quarantine=str(where))
            emit(TRAFFIC_QUARANTINED, {"version": version, "window": start, "quarantine": str(where),
                                       "problems": problems})
            log(outcome="quarantined traffic", version=version, window=start, reasons=problems)
        else:
            drifted = sorted(c for c in inputs if scores[c].category == "DRIFT")
            output_drifted = sorted(c for c in outputs if scores[c].category == "DRIFT")
            # Output drift alone retrains only with monitoring.drift.retrain_on_output_drift (see its description).
            if cfg.monitoring.drift.retrain_on_output_drift:
                drifted = sorted([*drifted, *output_drifted])
            verdict.update(outcome="drift" if drifted else "output_drift" if output_drifted else "ok",
                           drifted=drifted, output_drifted=output_drifted,
                           scores={c: d.score for c, d in scores.items()})
            if output_drifted and not drifted:
                log(outcome="output drift", version=version, window=start, drifted=output_drifted,
                    scores={c: round(v, 3) for c in output_drifted if (v := scores[c].score) is not None})
            last = ledger["drift_event"]
            if drifted and (last is None or start - last >= cfg.monitoring.drift.repeat_after_windows
                            * cfg.monitoring.window_s):
                ledger["drift_event"] = start
                emit(DRIFT_DETECTED, {"model": cfg.name, "version": version, "window": start, "drifted": drifted,
                                      "output_drifted": output_drifted, "scores": verdict["scores"]})
                log(outcome="drift detected", version=version, window=start, drifted=drifted,
                    output_drifted=output_drifted,
                    scores={c: round(v, 3) for c in drifted if (v := verdict["scores"][c]) is not None})
        ledger["windows"][str(start)] = verdict
        judged.append({"window": start, **verdict})
        write_atomic(ledger_path, json.dumps(ledger, indent=2))
    return {"version": version, "judged": judged}


# ---------------------------------------------------------------- run history
def log_run(stack: Stack, flow: str, trigger: str, run_id: str = "", **entry: Any) -> None:
    from mlops.registry import RunLog

    RunLog(stack.layout.runs).record(stack.cfg.name, {"flow": flow, "trigger": trigger, "flow_run_id": run_id,
                                                      **entry})


def require(step: str, work: dict[str, Any], recipe: str) -> None:
    """Level 0: `mlops run <step>` needs what the step before it left in the work file."""
    needs = {"validate": "dataset", "train": "validated", "evaluate": "trained", "register": "metrics"}
    before = {"dataset": "ingest", "validated": "validate", "trained": "train", "metrics": "evaluate"}
    if step in needs and needs[step] not in work:
        raise MlopsError(f"`mlops run {step}` needs the output of `{before[needs[step]]}`: run `mlops run "
                         f"{before[needs[step]]} recipe={recipe}` first.")
