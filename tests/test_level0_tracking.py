"""Level 0 through the CLI: `mlops run train`, `evaluate` and `register` are three processes, and the test
metrics and lineage still land in the tracking run that train opened, which register ends FINISHED.

A real Prefect server (on ports of this module's own), Lightning on breast_cancer for a few epochs, MLflow on
sqlite and neptune offline, both under the project's state dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlops._process import port_free

ROOT = Path(__file__).resolve().parents[1]
PORTS = (4620, 8620, 8621, 8622)
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")
STEPS = ("ingest", "validate", "train", "evaluate", "register")
pytestmark = pytest.mark.e2e


def mlops(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NEPTUNE_", "MLFLOW_"))}
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args, *PORT_OVERRIDES], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"mlops {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; stop what holds them (`mlops down` with the same port overrides)")
    proj = tmp_path_factory.mktemp("level0")
    shutil.copytree(ROOT / "recipes", proj / "recipes")
    yield proj
    mlops(proj, "down", check=False)


def _steps(project: Path, *overrides: str) -> dict:
    """Every step by hand, each its own process; the lineage of the version registered."""
    for step in STEPS:
        proc = mlops(project, "run", step, "recipe=breast_cancer", "maturity=0", *overrides)
        assert "Traceback" not in proc.stderr and "not found" not in proc.stderr, proc.stderr
    versions = [p for p in (project / ".mlops/registry/breast_cancer/versions").iterdir() if p.name.isdigit()]
    vdir = max(versions, key=lambda p: int(p.name))
    return json.loads((vdir / "lineage.json").read_text())


def test_level0_steps_log_into_trains_mlflow_run(project):
    from mlflow import MlflowClient

    lineage = _steps(project, "model.max_epochs=3")
    assert lineage["tracking"]["flavor"] == "mlflow"
    run_id = lineage["tracking"]["run_id"]
    uri = f"sqlite:///{(project / '.mlops').resolve()}/mlflow.db"
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tests = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    assert {"test_acc", "test_auc", "test_f1", "test_loss"} <= set(tests)
    assert tests == {k: v for k, v in lineage["metrics"].items() if k.startswith("test_")}
    assert len(client.get_metric_history(run_id, "val_loss")) == lineage["epochs"] == 3
    logged = json.loads(Path(client.download_artifacts(run_id, "lineage.json", str(project / "dl"))).read_text())
    assert logged["tracking"]["run_id"] == run_id and logged["data_fingerprint"] == lineage["data_fingerprint"]
    exp = client.get_experiment_by_name("breast_cancer")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]  # no second run


def test_level0_steps_log_into_trains_neptune_offline_run(project):
    from neptune.cli.collect import collect_offline_containers

    # Another model.* value: another training key, so train trains (and opens a neptune run) again.
    lineage = _steps(project, "tracking=neptune", "model.max_epochs=2")
    assert lineage["tracking"]["flavor"] == "neptune"
    run_id = lineage["tracking"]["run_id"]
    neptune_dir = project / ".mlops/neptune/.neptune"
    # What `neptune sync --path .mlops/neptune` uploads: one run, made of train's, evaluate's and register's folders.
    (container,) = collect_offline_containers(path=neptune_dir)
    assert container.container_id == run_id and len(container.execution_dirs) == 3
    ops = [json.loads(line)["obj"] for d in container.execution_dirs for log in sorted(d.path.glob("data-*.log"))
           for line in log.read_text().splitlines()]
    tests = {op["path"][1]: v["value"] for op in ops if op["path"][0] == "metrics" and op["path"][1].startswith("test_")
             for v in op["values"]}
    assert tests == {k: v for k, v in lineage["metrics"].items() if k.startswith("test_")}
    assert [op for op in ops if op["path"] == ["artifacts", "lineage.json"]]
    assert [op["value"] for op in ops if op["path"] == ["sys", "failed"]] == [False]
    assert [op["value"] for op in ops if op["path"] == ["sys", "name"]] == [f"breast_cancer-{lineage['key'][:8]}"]
