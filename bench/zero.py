"""Zero to served: a cold `mlops up recipe=breast_cancer` against MLflow alone, side by side, in one run.

    python bench/zero.py [--reps N] [--keep]

Each rep, in alternating order, from an empty directory to the first answered prediction (wall clock,
interpreter starts and imports included, a prediction request polled every 0.2 s from the moment the first
command starts):

- **mlops**: `mlops -C <tmp> up recipe=breast_cancer` in a fresh project (a copy of `recipes/`, nothing
  running, empty state): starts the Prefect server and Triton, ingests, validates, trains, evaluates,
  registers (with MLflow tracking, the default), exports and deploys; the answer is a KServe-v2 request to
  Triton. `mlops down` and the project removed afterwards.
- **MLflow**: `python bench/_mlflow_zero.py <tmp>` (the same data, split and Lightning model, trained with
  MLflow's logger, logged as a pyfunc model and registered, sqlite backend), then
  `mlflow models serve -m models:/breast_cancer/1 --env-manager local`; the answer is a POST /invocations.

Goal: mlops / MLflow <= 0.70 (median of the per-rep ratios). Own ports: BENCH_PORTS="PREFECT,TRITON_HTTP"
(default 4470,8470; grpc and metrics follow http) and MLflow's server on TRITON_HTTP + 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PP, _TP = (int(x) for x in os.environ.get("BENCH_PORTS", "4470,8470").split(","))
PORTS = [f"target.prefect.port={_PP}", f"serving.http_port={_TP}", f"serving.grpc_port={_TP + 1}",
         f"serving.metrics_port={_TP + 2}"]
MLFLOW_PORT = _TP + 3
TIMEOUT_S = 900


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "PREFECT_API_KEY", "MLOPS_PROJECT_DIR", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def _rows() -> tuple[list[str], list[list[float]]]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(2)
    return list(frame.columns), frame.to_numpy().tolist()


COLUMNS, ROWS = _rows()


def _post(url: str, body: dict) -> bool:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200 and bool(json.loads(r.read()))
    except (OSError, ValueError):
        return False


def triton_answers() -> bool:
    """One KServe-v2 request with the two rows, as the model's signature asks (one FP32 input of 30 columns)."""
    return _post(f"http://127.0.0.1:{_TP}/v2/models/breast_cancer/infer", {
        "inputs": [{"name": "numeric", "shape": [len(ROWS), len(COLUMNS)], "datatype": "FP32",
                    "data": [v for row in ROWS for v in row]}],
        "outputs": [{"name": "probabilities"}]})


def mlflow_answers() -> bool:
    return _post(f"http://127.0.0.1:{MLFLOW_PORT}/invocations",
                 {"dataframe_split": {"columns": COLUMNS, "data": ROWS}})


def _until(answers, procs: list[subprocess.Popen], t0: float, what: str) -> float:
    while time.perf_counter() - t0 < TIMEOUT_S:
        if answers():
            return time.perf_counter() - t0
        for p in procs:
            if p.poll() not in (None, 0):
                raise SystemExit(f"{what}: {p.args} exited {p.returncode}")
        time.sleep(0.2)
    raise SystemExit(f"{what}: no answer within {TIMEOUT_S} s")


def run_mlops(keep: bool) -> float:
    project = Path(tempfile.mkdtemp(prefix="mlops-bench-zero-"))
    shutil.copytree(ROOT / "recipes", project / "recipes")
    log = open(project / "up.log", "w")
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "mlops.cli", "-C", str(project), "up", "recipe=breast_cancer",
                              *PORTS], env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=project)
        took = _until(triton_answers, [p], t0, "mlops up")
        if p.wait(TIMEOUT_S) != 0:
            raise SystemExit(f"mlops up exited {p.returncode}; see {project / 'up.log'}")
        return took
    finally:
        subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), "down", "recipe=breast_cancer",
                        *PORTS], env=_env(), capture_output=True, timeout=120)
        if not keep:
            shutil.rmtree(project, ignore_errors=True)


def run_mlflow(keep: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="mlops-bench-zero-mlflow-"))
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    server = None
    try:
        t0 = time.perf_counter()
        train = subprocess.run([sys.executable, str(ROOT / "bench" / "_mlflow_zero.py"), str(root)], env=env,
                               capture_output=True, text=True, timeout=TIMEOUT_S, cwd=root)
        if train.returncode != 0:
            raise SystemExit(f"_mlflow_zero.py exited {train.returncode}\n{train.stderr[-3000:]}")
        server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                                   "models:/breast_cancer/1", "--env-manager", "local", "-h", "127.0.0.1",
                                   "-p", str(MLFLOW_PORT)], env=env, stdout=open(root / "serve.log", "w"),
                                  stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        return _until(mlflow_answers, [server], t0, "mlflow models serve")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    ours, theirs = [], []
    for rep in range(args.reps):
        order = [("mlops", run_mlops, ours), ("mlflow", run_mlflow, theirs)]
        for name, fn, out in order if rep % 2 == 0 else order[::-1]:
            out.append(fn(args.keep))
            print(f"rep {rep + 1}: {name:<6} zero to first answer {out[-1]:6.1f} s", flush=True)
        print(f"rep {rep + 1}: mlops / MLflow = {ours[-1] / theirs[-1]:.2f}", flush=True)
    ratios = [a / b for a, b in zip(ours, theirs)]
    med = statistics.median(ratios)
    print(f"\nmedians of {args.reps}: mlops {statistics.median(ours):.1f} s, MLflow {statistics.median(theirs):.1f} s")
    print(f"  mlops / MLflow = {med:.2f} (per rep {[round(r, 2) for r in ratios]}; goal <= 0.70: "
          f"{'met' if med <= 0.70 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
