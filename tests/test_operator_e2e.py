"""The operator's view, end to end: a project from `mlops init`, one real `mlops up` in it, and what the Prefect
UI then shows, read back through the Prefect API: the run's name and tags, its logs naming config keys, and
its artifacts. Also: `tracking.ui` starts the MLflow UI and `down` stops it; status, runs and down need no
recipe. Ports of its own (4700, 8700-8702, 5700), so it runs beside tests/test_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mlops._process import port_free

ROOT = Path(__file__).resolve().parents[1]
PORTS = (4700, 8700, 8701, 8702, 5700)
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}", "tracking.ui=true", f"tracking.ui_port={PORTS[4]}")
API = f"http://127.0.0.1:{PORTS[0]}/api"
pytestmark = pytest.mark.e2e


def mlops(cwd: Path, *args: str, ports: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args, *(PORT_OVERRIDES if ports else ())], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"mlops {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    assert "Traceback" not in proc.stderr
    return proc


def post(path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(API + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; stop what holds them")
    dest = tmp_path_factory.mktemp("operator") / "churn-project"
    proc = mlops(ROOT, "init", str(dest), "--from", "recipes/data/churn.csv", "--target", "churned", ports=False)
    assert f"mlops plan recipe=churn-project" in proc.stdout
    yield dest
    mlops(dest, "down", check=False)


def test_init_writes_a_recipe_from_the_data(project):
    recipe = (project / "recipes" / "churn-project.yaml").read_text()
    assert "  numeric:\n    - tenure_months\n    - monthly_charges\n    - support_calls\n    - data_gb\n" in recipe
    assert "  categorical:\n    - contract\n    - payment_method\n    - region\n" in recipe
    assert "# left out customer_id: ID-like: a distinct value in each of the 1200 rows" in recipe
    assert "task: classification" in recipe
    assert (project / ".gitignore").read_text().count(".mlops/") == 1 and (project / "README.md").is_file()
    # It validates as written: `plan` with no recipe= uses the project's only recipe.
    plan = mlops(project, "plan", "--json", ports=False)
    assert json.loads(plan.stdout)["config"]["name"] == "churn-project"


def test_up_in_the_new_project_reaches_ready(project):
    proc = mlops(project, "up")
    assert "churn-project version 1 is READY (new version)" in proc.stderr
    assert f"mlflow    http://127.0.0.1:{PORTS[4]}" in proc.stderr


def test_the_run_page_tells_the_story(project):
    lineage = json.loads((project / ".mlops/registry/churn-project/versions/1/lineage.json").read_text())
    run_id = lineage["flow_run_id"]
    [run] = post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert run["name"] == "churn-project-v1"
    assert {"recipe:churn-project", "level:0", "stack:local", "trigger:up"} <= set(run["tags"])
    by_tag = post("/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["recipe:churn-project"]}}})
    assert run_id in {r["id"] for r in by_tag}

    logs = [entry["message"] for entry in post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                                               "limit": 200})]
    text = "\n".join(logs)
    assert f"read 1200 rows from " in text and lineage["data_fingerprint"] in text
    assert "<data.checks.min_rows>" in text and "<data.checks.max_null_fraction>" in text
    assert f"for {lineage['epochs']} epoch(s)" in text and "best epoch" in text and "<model.lr>" in text
    assert "registered churn-project version 1 <registry.flavor=local>" in text
    assert "triton <serving.flavor> serves churn-project version 1 at " in text

    artifacts = {a["key"]: a for a in post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})}
    assert {"churn-project-evaluation", "churn-project-endpoint", "churn-project-tracking-run"} <= set(artifacts)
    table = json.loads(artifacts["churn-project-evaluation"]["data"])
    assert {r["metric"]: r["candidate"] for r in table}["test_acc"] == pytest.approx(lineage["metrics"]["test_acc"],
                                                                                     abs=1e-6)
    endpoint = f"http://127.0.0.1:{PORTS[1]}/v2/models/churn-project/versions/1/infer"
    assert endpoint in artifacts["churn-project-endpoint"]["data"]
    run_url = f"http://127.0.0.1:{PORTS[4]}/#/experiments/"
    assert run_url in artifacts["churn-project-tracking-run"]["data"]
    assert lineage["tracking"]["run_id"] in artifacts["churn-project-tracking-run"]["data"]


def test_status_runs_and_down_need_no_recipe(project):
    st = json.loads(mlops(project, "status", "--json").stdout)
    assert st["services"]["mlflow"] == {"healthy": True, "url": f"http://127.0.0.1:{PORTS[4]}",
                                        "pid": st["services"]["mlflow"]["pid"]}
    assert [r["model"] for r in st["registries"]] == ["churn-project"]
    text = mlops(project, "status").stdout
    assert f"mlflow   " in text and f"http://127.0.0.1:{PORTS[4]}" in text and "champion churn-project@1" in text
    runs = mlops(project, "runs", ports=False).stdout
    assert runs.startswith("churn-project  ") and "mlops-up" in runs
    down = mlops(project, "down").stdout
    assert "mlflow   stopped" in down and "prefect  stopped" in down
    assert all(port_free("127.0.0.1", p) for p in PORTS)
