"""Bench: the image classifier (recipe=digits) and a team's own LightningModule (examples/custom_model,
recipe=churn_net), each from an empty project to served answers.

    python bench/models.py                       # both, about 6 min on 2 cores
    python bench/models.py --models digits --duration 5 --keep

For each model, in a fresh temporary project with its own ports (Prefect 4690, Triton 8690-8692):
1. **cold up**: `mlops up recipe=<r>` with nothing running and empty state, to READY (wall time of the command);
2. **served vs evaluation**: the whole test split of the registered version's snapshot sent to Triton
   (`mlops.serving.predict`, the client helper) against what evaluation computes in torch from the version's
   checkpoint (`mlops.serving._export.served_predictions`, the same function the register step profiles); the
   largest absolute difference of a probability is printed (must be float tolerance, < 1e-4);
3. **throughput and p50 at 1 and 32 connections**: wrk posting one test row (one image) as KServe-v2 JSON, beside
   the baseline measured in the same run: the same model.onnx in onnxruntime, in this process, one row per call
   (the compute a request cannot avoid). Ratios served/onnxruntime are printed; the gap is the HTTP, JSON and
   python-backend cost per request.
Then `mlops down` and the project is removed (unless --keep).

Not a test: see README.md for the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "serving"))

from run import wrk  # noqa: E402  (bench/serving/run.py: wrk with post.lua, parsed)

PREFECT, HTTP, GRPC, METRICS = 4690, 8690, 8691, 8692
PORTS = (f"target.prefect.port={PREFECT}", f"serving.http_port={HTTP}", f"serving.grpc_port={GRPC}",
         f"serving.metrics_port={METRICS}")
DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64",
             np.dtype(object): "BYTES"}


def _env(extra_path: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(ROOT)) if p)
    return env


def mlops(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), *args, *PORTS], env=env,
                          capture_output=True, text=True, timeout=1800)


def project_for(model: str, tmp: Path) -> tuple[Path, str, str]:
    """(project, recipe, extra PYTHONPATH)."""
    project = tmp / "project"
    (project / "recipes" / "data").mkdir(parents=True)
    if model == "digits":
        shutil.copy(ROOT / "recipes" / "digits.yaml", project / "recipes")
        return project, "digits", ""
    example = ROOT / "examples" / "custom_model"
    shutil.copy(ROOT / "recipes" / "data" / "churn.csv", project / "recipes" / "data")
    shutil.copy(example / "recipes" / "churn_net.yaml", project / "recipes")
    build, site = tmp / "build", tmp / "site"
    shutil.copytree(example, build)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(build)], check=True)
    return project, "churn_net", str(site)


def evaluation(project: Path, recipe: str, site: str):  # noqa: ANN201
    """The test split's served-form inputs and evaluation's answers on them, and the served signature."""
    import pandas as pd

    if site:  # the example's entry point, seen by this process too: the registry and the schema built again
        import importlib

        from mlops import flavors
        from mlops.recipe import schema

        sys.path.insert(0, site)
        importlib.invalidate_caches()
        flavors.registered.cache_clear()
        schema.config_class.cache_clear()
    from mlops.recipe import load
    from mlops.serving import _client
    from mlops.serving._export import served_predictions
    from mlops.stack import Stack
    from mlops.training import load_module, split_frame

    cfg = load([f"recipe={recipe}", *PORTS], project, check_data=False)
    stack = Stack(cfg, project)
    version = stack.model_store.get(cfg.name, 1)
    snapshot = pd.read_parquet(version.lineage["data_snapshot"])
    test = snapshot.loc[split_frame(snapshot, cfg.data, cfg.model.task).test.index]
    module = load_module(version.file("model.ckpt"), cfg.model.flavor)
    signature = json.loads((stack.layout.triton_repository / cfg.name / "1" / "signature.json").read_text())
    _, batches = served_predictions(module, test)
    answers = [next(iter(outputs.values())) for _, outputs in batches]
    if all(served_inputs for served_inputs, _ in batches):  # tensors (images): as served, batch by batch
        inputs = [served_inputs for served_inputs, _ in batches]
    else:  # named columns: the rows, encoded as the client encodes them
        inputs, answers = [_client.to_inputs(signature, test)], [np.concatenate(answers)]
    return cfg, signature, inputs, answers, stack.layout.triton_repository / cfg.name / "1" / "model.onnx"


def served_difference(cfg, signature: dict, inputs: list, answers: list) -> float:  # noqa: ANN001
    from mlops.serving import _client

    worst = 0.0
    for tensors, expected in zip(inputs, answers, strict=True):
        got = _client.predict(f"127.0.0.1:{HTTP}", cfg.name, signature, tensors, batch_size=64)
        worst = max(worst, float(np.abs(np.asarray(got["probabilities"]) - expected).max()))
    return worst


def one_row_body(signature: dict, tensors: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    row = {name: array[:1] for name, array in tensors.items()}
    path.write_text(json.dumps({"inputs": [
        {"name": spec["name"], "shape": list(row[spec["name"]].shape),
         "datatype": DATATYPES[row[spec["name"]].dtype],
         "data": [str(v) if row[spec["name"]].dtype == object else v for v in row[spec["name"]].ravel().tolist()]}
        for spec in signature["inputs"]]}))
    return row


def onnxruntime_baseline(onnx: Path, row: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        session.run(None, row)
        times.append(time.perf_counter() - t)
    return {"rps": len(times) / sum(times), "p50": float(np.median(times)) * 1e3}


def bench(model: str, duration: float, keep: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"mlops-bench-{model}-"))
    project, recipe, site = project_for(model, tmp)
    env = _env(site)
    try:
        t = time.perf_counter()
        up = mlops(project, env, "up", f"recipe={recipe}")
        cold = time.perf_counter() - t
        if up.returncode != 0:
            raise SystemExit(f"{model}: mlops up failed ({up.returncode}):\n{up.stderr[-3000:]}")
        cfg, signature, inputs, answers, onnx = evaluation(project, recipe, site)
        diff = served_difference(cfg, signature, inputs, answers)
        row = one_row_body(signature, inputs[0], tmp / "body.json")
        url = f"http://127.0.0.1:{HTTP}/v2/models/{cfg.name}/infer"
        served = {c: wrk(url, tmp / "body.json", c, duration) for c in (1, 32)}
        base = onnxruntime_baseline(onnx, row, duration)
        return {"model": model, "cold_up_s": cold, "max_abs_diff": diff, "rows": sum(len(a) for a in answers),
                "served": served, "onnxruntime": base}
    finally:
        mlops(project, env, "down", f"recipe={recipe}")
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,custom", help="comma-separated: digits, custom")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk point")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/models.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    results = [bench(m.strip(), args.duration, args.keep) for m in args.models.split(",") if m.strip()]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| model | cold up to READY | max abs diff served vs eval (rows) | c=1 rps / p50 | c=32 rps / p50 | "
          "onnxruntime in-process rps / p50 | served/ort rps c=32 | served/ort p50 c=1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s1, s32, o = r["served"][1], r["served"][32], r["onnxruntime"]
        print(f"| {r['model']} | {r['cold_up_s']:.1f} s | {r['max_abs_diff']:.2e} ({r['rows']}) | "
              f"{s1['rps']:.0f} / {s1['p50']:.2f} ms | {s32['rps']:.0f} / {s32['p50']:.2f} ms | "
              f"{o['rps']:.0f} / {o['p50']:.3f} ms | {s32['rps'] / o['rps']:.2f} | {s1['p50'] / o['p50']:.1f} |")
        errors = s1["errors"] + s32["errors"]
        if errors:
            print(f"  {r['model']}: {errors} non-2xx responses under wrk", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
