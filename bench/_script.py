"""The `up` flow's work as a plain Python script, without Prefect (the baseline of bench/up.py).

    python bench/_script.py PROJECT [--bare] [hydra overrides ...]

Same config (mlops.recipe.load), same data, same library calls as the flow's tasks, in the same order:
read → validate → split → fit → evaluate → register → export ONNX → publish to Triton's repository and load.
By default it also does what the flow does besides those steps (MLflow tracking, the whylogs reference
profile registered with the version, a parquet snapshot of the data), so that flow/script isolates
what Prefect adds. ``--bare`` leaves those out.

State: its own registry/training/exports under PROJECT/.bench-script; it publishes into the running
Triton's repository (PROJECT/<target.state_dir>/triton/models) under the model name <recipe>_script, so
it never collides with the flow's versions. Prints one JSON line: per-step seconds (after imports).
"""

from __future__ import annotations

import json
import sys
import time

T_START = time.perf_counter()
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # as the mlops CLI does

import io  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")

import pandas as pd  # noqa: E402

from mlops.data import fingerprint, read_frame, validate_frame  # noqa: E402
from mlops.recipe import load  # noqa: E402
from mlops.registry import Registry, write_atomic  # noqa: E402
from mlops.serving import _repository, _server  # noqa: E402
from mlops.serving._export import export_onnx  # noqa: E402
from mlops.recipe.keys import config_hash, training_key  # noqa: E402
from mlops.tracking import make_tracker  # noqa: E402
from mlops.training import evaluate, fit, load_module, split_frame  # noqa: E402


assert "prefect" not in sys.modules, "the plain script must not import Prefect"
T_IMPORTED = time.perf_counter()


def main(argv: list[str]) -> dict[str, float]:
    project = Path(argv[0]).resolve()
    bare = "--bare" in argv[1:]
    overrides = [a for a in argv[1:] if a != "--bare"]
    steps: dict[str, float] = {"imports": T_IMPORTED - T_START}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = steps.get(name, 0.0) + now - t
        t = now

    cfg = load(overrides, project)
    served_state = (project / cfg.target.state_dir).resolve()
    state = project / ".bench-script"
    lap("config")

    # read (+ the flow's snapshot, which train/evaluate read back)
    frame = read_frame(cfg.data, project)
    frame = frame[[*cfg.data.features, cfg.data.target]]
    fp = fingerprint(frame)
    key = training_key(cfg, fp)
    if not bare:
        snapshot = state / "datasets" / cfg.name / f"{fp.removeprefix('sha256:')[:20]}.parquet"
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        write_atomic(snapshot, buf.getvalue())
        frame = pd.read_parquet(snapshot)
    lap("ingest")

    report = validate_frame(frame, cfg.data, cfg.model.task)
    report.raise_for_problems(f"the data of recipe {cfg.name!r}")
    lap("validate")

    split = split_frame(frame, cfg.data, cfg.model.task)
    out = state / "training" / cfg.name / key
    loggers, tracker = [], None
    if not bare:
        tracker = make_tracker(cfg.tracking, state)
        tracker.start_run(f"{cfg.name}-{key[:8]}", tags={"mlops.model": cfg.name, "mlops.key": key})
        tracker.log_params(cfg.model_dump(mode="json", include={"data", "model", "compute", "seed"}))
        loggers = [tracker.lightning_logger()]
    result = fit(cfg, split, out, loggers=loggers)
    lap("train")

    # evaluate on the checkpoint, as the flow does (it reloads it in its own task)
    metrics = evaluate(cfg, load_module(result.checkpoint), split)
    if tracker is not None:
        tracker.log_metrics(metrics)
    lap("evaluate")

    files = {"model.ckpt": result.checkpoint, "history.json": out / "history.json"}
    if not bare and cfg.monitoring.flavor == "whylogs":
        import whylogs as why

        profile = out / "reference_profile.bin"
        why.log(split.train).view().write(str(profile))
        files["reference_profile.bin"] = profile
    lineage = {"key": key, "config_hash": config_hash(cfg), "data_fingerprint": fp,
               "metrics": {**result.val_metrics, **metrics}, "epochs": result.epochs}
    mv = Registry(state / "registry").register(cfg.name, files, lineage)
    if tracker is not None:
        tracker.log_dict(mv.lineage, "lineage.json")
        tracker.end_run("FINISHED")
    lap("register")

    export_dir = state / "exports" / cfg.name / str(mv.version)
    export_dir.mkdir(parents=True, exist_ok=True)
    signature = export_onnx(load_module(mv.file("model.ckpt")), export_dir / "model.onnx").to_dict()
    (export_dir / "signature.json").write_text(json.dumps(signature, indent=2))
    if not bare:  # export_version also lays the same model.onnx out for a stock Triton
        _repository.write_stock_repository(export_dir / "triton-onnxruntime", cfg.serving.model_name, mv.version,
                                           export_dir / "model.onnx", signature, cfg.serving)
    lap("export")

    name = f"{cfg.serving.model_name}_script"
    url = f"http://{cfg.serving.host}:{cfg.serving.http_port}"
    _repository.write_version(served_state / "triton" / "models", name, mv.version, export_dir / "model.onnx",
                              signature, cfg.serving)
    _server.load(name, url, timeout=cfg.serving.ready_timeout_s)
    Registry(state / "registry").set_alias(cfg.name, "champion", mv.version)
    lap("deploy")
    steps["version"] = mv.version
    steps["epochs"] = result.epochs
    steps["after_imports"] = time.perf_counter() - T_IMPORTED
    return steps


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
