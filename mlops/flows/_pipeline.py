"""The `up` flow: ingest → validate → train → evaluate → register → export → deploy.

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
def validate(cfg: Config, dataset: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from mlops.data import validate_frame

    report = validate_frame(pd.read_parquet(dataset["path"]), cfg.data, cfg.model.task)
    report.raise_for_problems(f"the data of recipe {cfg.name!r} ({dataset['path']})")
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

        tmp = train_dir / ".reference_profile.bin.tmp"
        why.log(_split(cfg, dataset).train).view().write(str(tmp))
        tmp.replace(path)
    return path


@task(name="export")
def export(cfg: Config, version: dict[str, Any], state_dir: str) -> dict[str, Any]:
    """model.onnx + signature, a stock-Triton (onnxruntime backend) repository beside it. Written once."""
    from mlops.serving import export_version

    return export_version(cfg, version, Path(state_dir))


@task(name="deploy", retries=1, retry_delay_seconds=2)
def deploy(cfg: Config, exported: dict[str, Any], state_dir: str) -> dict[str, Any]:
    from mlops.serving import deploy_version

    return deploy_version(cfg, exported, Path(state_dir))


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
        _run("validate", validate, cfg, dataset)
        trained = _run("train", train, cfg, dataset, state_dir, progress)
        metrics = _run("evaluate", evaluate, cfg, dataset, trained)
        version = _run("register", register, cfg, dataset, trained, metrics, state_dir)
    finally:
        while _open_runs:
            _open_runs.popitem()[1].end_run("FAILED")
    exported = _run("export", export, cfg, version, state_dir)
    served = _run("deploy", deploy, cfg, exported, state_dir)
    return {"model": cfg.name, "version": version["version"], "new_version": version["new"],
            "metrics": metrics, "flow_run_id": str(flow_run.get_id()), **served}
