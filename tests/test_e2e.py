"""End to end through the CLI, in subprocesses, with the real Prefect server, Lightning, Triton and MLflow.

The tests in this module run in order and share one project (a copy of recipes/) and its services. They run
docs/quickstart.md's commands, with ports of their own added to each, so a stack left running on the default
ports (README's first command) does not collide with them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlops._process import port_free

ROOT = Path(__file__).resolve().parents[1]
# MLOPS_E2E_PORTS="prefect,http,grpc,metrics" moves them, for a second checkout testing beside this one.
PORTS = tuple(int(p) for p in os.environ.get("MLOPS_E2E_PORTS", "4491,8491,8492,8493").split(","))
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")
pytestmark = pytest.mark.e2e


def mlops(project: Path, *args: str, timeout: float = 600, check: bool = True,
          ports: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args, *(PORT_OVERRIDES if ports else ())], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"mlops {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; stop what holds them (e.g. `mlops down` in another project)")
    proj = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "recipes", proj / "recipes")
    yield proj
    mlops(proj, "down", check=False)


def _versions(project: Path, model: str) -> list[str]:
    vdir = project / ".mlops" / "registry" / model / "versions"
    return sorted(p.name for p in vdir.iterdir() if p.name.isdigit())


def _status(project: Path) -> dict:
    return json.loads(mlops(project, "status", "--json").stdout)


def test_up_breast_cancer_serves_on_triton(project):
    proc = mlops(project, "up", "stack=reasonable-scale", "recipe=breast_cancer")
    assert "breast_cancer version 1 is READY (new version)" in proc.stderr
    assert f"endpoint   http://127.0.0.1:{PORTS[1]}/v2/models/breast_cancer/versions/1/infer" in proc.stdout
    assert f"prefect ui http://127.0.0.1:{PORTS[0]}" in proc.stdout
    st = _status(project)
    assert st["services"]["prefect"]["healthy"] and st["services"]["triton"]["healthy"]
    assert st["services"]["triton"]["url"] == f"http://127.0.0.1:{PORTS[1]}"
    assert {"name": "breast_cancer", "version": "1", "state": "READY"} in st["models"]


def test_predict_heldout_rows_matches_evaluation(project):
    from mlops.recipe import load
    from mlops.training import split_frame

    cfg = load(["recipe=breast_cancer"], project)
    from sklearn.datasets import load_breast_cancer

    test = split_frame(load_breast_cancer(as_frame=True).frame, cfg.data, "classification").test
    rows = project / "heldout.csv"
    test.drop(columns=["target"]).to_csv(rows, index=False)
    result = json.loads(mlops(project, "predict", "recipe=breast_cancer", "--input", str(rows), "--json").stdout)
    assert result["version"] == 1 and len(result["labels"]) == len(test)
    accuracy = (pd.Series(result["labels"]) == test["target"].to_numpy()).mean()
    assert accuracy >= 0.9
    # The served model answers as evaluation did: same rows, same accuracy as the registered test metric.
    lineage = json.loads((project / ".mlops/registry/breast_cancer/versions/1/lineage.json").read_text())
    assert accuracy == pytest.approx(lineage["metrics"]["test_acc"], abs=1e-6)  # float32 metric; a row is 0.012
    # The quickstart's example, as a table.
    table = mlops(project, "predict", "recipe=breast_cancer", "--input", "recipes/data/breast_cancer_rows.csv").stdout
    assert table.splitlines()[0] == "row  label  p(0)  p(1)" and len(table.splitlines()) == 6


def test_lineage_and_tracking_are_recorded(project):
    vdir = project / ".mlops/registry/breast_cancer/versions/1"
    lineage = json.loads((vdir / "lineage.json").read_text())
    assert lineage["config_hash"].startswith("sha256:") and lineage["data_fingerprint"].startswith("sha256:")
    assert lineage["flow_run_id"] and lineage["tracking"]["flavor"] == "mlflow"
    assert {"model.ckpt", "history.json", "reference_profile.bin", "MANIFEST.json"} <= {p.name for p in vdir.iterdir()}
    assert all(p.stat().st_mode & 0o222 == 0 for p in vdir.iterdir())  # read-only: versions are immutable
    from mlops.registry import Registry

    Registry(project / ".mlops/registry").verify(Registry(project / ".mlops/registry").get("breast_cancer", 1))
    db = sqlite3.connect(project / ".mlops" / "mlflow.db")
    run_id = lineage["tracking"]["run_id"]
    epochs = db.execute("select count(*) from metrics where run_uuid=? and key='val_loss'", (run_id,)).fetchone()[0]
    tests = {k for (k,) in db.execute("select key from latest_metrics where run_uuid=? and key like 'test_%'",
                                       (run_id,))}
    params = db.execute("select value from params where run_uuid=? and key='model.lr'", (run_id,)).fetchone()
    status = db.execute("select status from runs where run_uuid=?", (run_id,)).fetchone()[0]
    assert epochs == lineage["epochs"] > 1
    assert {"test_acc", "test_auc", "test_f1", "test_loss"} <= tests
    assert params == ("0.002",) and status == "FINISHED"
    assert (project / ".mlops/mlartifacts").rglob("lineage.json")


def test_warm_up_does_not_retrain(project):
    ckpt = project / ".mlops/training/breast_cancer"
    before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    proc = mlops(project, "up", "stack=reasonable-scale", "recipe=breast_cancer")
    assert "(unchanged, nothing retrained)" in proc.stderr
    assert "up to date: breast_cancer@1 was trained on this config and data and is served" in proc.stderr
    # --rerun runs the Prefect flow; train and evaluate come from Prefect's cache on the training key.
    proc = mlops(project, "up", "recipe=breast_cancer", "--rerun")
    cached = {line.split()[1] for line in proc.stderr.splitlines() if "(cached)" in line}
    assert cached == {"train", "evaluate"}, proc.stderr
    assert _versions(project, "breast_cancer") == ["1"]
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == before


def test_up_churn_csv_with_categoricals(project):
    proc = mlops(project, "up", "recipe=churn")
    assert "churn version 1 is READY (new version)" in proc.stderr
    served = {(m["name"], m["version"]) for m in _status(project)["models"]}
    assert {("breast_cancer", "1"), ("churn", "1")} <= served
    # churn_rows.json has a region never seen in training: it maps to "unknown", not an error.
    result = json.loads(mlops(project, "predict", "recipe=churn", "--input", "recipes/data/churn_rows.json",
                              "--json").stdout)
    assert result["classes"] == ["no", "yes"] and len(result["labels"]) == 4
    assert all(abs(sum(p) - 1) < 1e-5 for p in result["probabilities"])
    data = pd.read_csv(project / "recipes/data/churn.csv")
    rows = project / "churn_all.csv"
    data.drop(columns=["churned"]).to_csv(rows, index=False)
    labels = json.loads(mlops(project, "predict", "recipe=churn", "--input", str(rows), "--json").stdout)["labels"]
    assert (pd.Series(labels) == data["churned"]).mean() >= 0.7


def test_predict_rejects_rows_that_do_not_fit(project):
    bad = project / "bad.csv"
    pd.DataFrame({"mean radius": ["big"], "mean texture": [1.0]}).to_csv(bad, index=False)
    proc = mlops(project, "predict", "recipe=breast_cancer", "--input", str(bad), check=False)
    assert proc.returncode == 7 and "Traceback" not in proc.stderr
    assert "numeric columns 'mean perimeter'" in proc.stderr
    assert "column 'mean radius' must be numeric" in proc.stderr


def test_plan_has_no_side_effects_and_sees_the_cached_version(project):
    before = sorted(p.relative_to(project) for p in (project / ".mlops/registry").rglob("*"))
    plan = json.loads(mlops(project, "plan", "recipe=breast_cancer", "--json").stdout)["plan"]
    assert plan["services"][0] == {"name": "prefect", "url": f"http://127.0.0.1:{PORTS[0]}/api", "action": "reuse"}
    assert plan["steps"][2]["action"].startswith("reuse version 1")
    changed = json.loads(mlops(project, "plan", "recipe=breast_cancer", "model.lr=3e-4", "--json").stdout)["plan"]
    assert changed["steps"][2]["action"].startswith("train tabular_mlp classification")
    assert sorted(p.relative_to(project) for p in (project / ".mlops/registry").rglob("*")) == before


def test_target_aws_fails_clearly_before_any_side_effect(project):
    proc = mlops(project, "up", "target=aws", check=False, ports=False)  # the aws target has no local ports
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert "the `pulumi` CLI is not on PATH" in proc.stderr and "nothing was changed" in proc.stderr


def test_down_stops_everything_and_frees_ports(project):
    proc = mlops(project, "down", "--json")
    assert json.loads(proc.stdout) == {"triton": True, "prefect": True}
    assert all(port_free("127.0.0.1", p) for p in PORTS)
    st = _status(project)
    assert not st["services"]["prefect"]["healthy"] and not st["services"]["triton"]["healthy"]
    # Artifacts, registry and tracking data stay.
    assert _versions(project, "breast_cancer") == ["1"] and (project / ".mlops/mlflow.db").is_file()


def test_served_traffic_was_profiled_off_the_request_path(project):
    """Triton's python backend sampled what it served into whylogs windows, flushed when `down` unloaded it."""
    report = json.loads(mlops(project, "monitor", "report", "recipe=breast_cancer", "--json").stdout)
    assert report["version"] == 1 and report["windows"], report
    # ~10% (monitoring.sample_rate) of the held-out and example rows predicted above.
    assert 0 < sum(w["rows"] for w in report["windows"]) < 86 + 5
    html = project / "drift.html"
    mlops(project, "monitor", "report", "recipe=breast_cancer", "--html", str(html))
    assert html.read_text().count("data:image/png;base64,") >= 1


def test_validate_checks_a_batch_by_hand(project):
    assert "1200 rows pass every constraint" in mlops(project, "validate", "recipe=churn", "--input",
                                                      "recipes/data/churn.csv").stdout
    bad = project / "bad_batch.csv"
    frame = pd.read_csv(project / "recipes/data/churn.csv").head(300)
    frame.loc[frame.index[:150], "tenure_months"] = None
    frame.to_csv(bad, index=False)
    proc = mlops(project, "validate", "recipe=churn", "--input", str(bad), check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "column 'tenure_months': null percentage of tenure_months lower than 0.05" in proc.stderr


def test_up_never_serves_garbage(project):
    """A CSV with inf and -1e308 stops at the data gate; a loss that turns NaN stops training: `up` exits
    non-zero with the reason, never READY, and nothing new is registered."""
    before = _versions(project, "churn") if (project / ".mlops/registry/churn").is_dir() else []
    frame = pd.read_csv(project / "recipes/data/churn.csv")
    frame["monthly_charges"] = frame["monthly_charges"].astype(float)
    frame.loc[5, "monthly_charges"] = float("inf")
    frame.loc[9, "monthly_charges"] = -1e308
    frame.to_csv(project / "garbage.csv", index=False)
    proc = mlops(project, "up", "recipe=churn", "data.path=garbage.csv", check=False)
    assert "Traceback" not in proc.stderr + proc.stdout  # the run page has it; the terminal gets one paragraph
    assert proc.returncode == 3 and "READY" not in proc.stderr + proc.stdout and "mlops: data validation failed" \
        in proc.stderr
    assert "column 'monthly_charges' has 2 non-finite or out-of-float32-range value(s) (row 5: inf, row 9: " \
           "-1e+308)" in proc.stderr
    proc = mlops(project, "up", "recipe=churn", "model.lr=1e30", "model.max_epochs=2", check=False)
    assert proc.returncode != 0 and "READY" not in proc.stderr + proc.stdout
    assert "not finite" in proc.stderr or "model.lr" in proc.stderr, proc.stderr
    after = _versions(project, "churn") if (project / ".mlops/registry/churn").is_dir() else []
    assert after == before


def test_up_holds_the_model_to_the_recipes_floors_at_level_0(project):
    """maturity 0 has no champion gate, but the recipe's floors still apply before anything is served."""
    proc = mlops(project, "up", "recipe=churn", "seed=11", "model.max_epochs=2", "+maturity.gate.floors.test_acc=0.9999",
                 check=False)
    assert proc.returncode == 9 and "READY" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert "is below the floor 0.9999 <maturity.gate.floors.test_acc>" in proc.stderr
    assert "It stays registered, marked rejected" in proc.stderr
    latest = _versions(project, "churn")[-1]
    status = json.loads((project / ".mlops/registry/churn/status.json").read_text())
    assert status[latest]["status"] == "rejected"
    served = [m for m in _status(project)["models"] if m["name"] == "churn" and str(m["version"]) == latest]
    assert served == []
