"""A project's services are part of its state, and every run is in its history: through the CLI, with two
projects, a real Prefect server and a real Triton.

Project A starts its services on ports of its own with an `up` that fails on bad data; the plain commands
that follow (no port overrides) find them there. Project B expects its services on A's ports: `plan` says
whose they are and `up` refuses to reuse them. The tests run in order and share A's services.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlops._process import port_free

ROOT = Path(__file__).resolve().parents[1]
A_PORTS = {"target.prefect.port": 4740, "serving.http_port": 8740, "serving.grpc_port": 8741,
           "serving.metrics_port": 8742}
B_PORTS = {"target.prefect.port": 4741, "serving.http_port": 8750, "serving.grpc_port": 8751,
           "serving.metrics_port": 8752}
TINY = ["recipe=churn", "data.path=recipes/data/tiny.csv"]  # 10 rows: below data.checks.min_rows=50
pytestmark = pytest.mark.e2e


def _overrides(ports: dict[str, int]) -> list[str]:
    return [f"{k}={v}" for k, v in ports.items()]


def mlops(project: Path, *args: str, timeout: float = 600, task_failure: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "-C", str(project), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    # `task_failure`: Prefect's own logger prints the failed task's traceback before mlops' message; the
    # message itself (after "mlops:") must have none.
    shown = proc.stderr.rpartition("mlops: ")[2] if task_failure else proc.stderr
    assert "Traceback" not in shown, proc.stderr
    return proc


def _project(root: Path) -> Path:
    shutil.copytree(ROOT / "recipes", root / "recipes")
    pd.read_csv(root / "recipes" / "data" / "churn.csv").head(10).to_csv(root / "recipes/data/tiny.csv", index=False)
    return root


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    busy = [p for p in (*A_PORTS.values(), *B_PORTS.values()) if not port_free("127.0.0.1", p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; stop what holds them (e.g. `mlops down` in another project)")
    a, b = _project(tmp_path_factory.mktemp("a")), _project(tmp_path_factory.mktemp("b"))
    yield a, b
    for p in (a, b):
        mlops(p, "down", "recipe=churn", *_overrides(A_PORTS if p is a else B_PORTS))


def _runs(project: Path) -> list[dict]:
    proc = mlops(project, "runs", "recipe=churn", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_failed_up_is_in_the_history_and_its_services_are_remembered(projects):
    a, _b = projects
    proc = mlops(a, "up", *TINY, *_overrides(A_PORTS), task_failure=True)
    assert proc.returncode == 3, proc.stderr
    assert "failed validation and was quarantined" in proc.stderr
    (run,) = _runs(a)
    assert (run["flow"], run["trigger"], run["outcome"]) == ("mlops-up", "up", "quarantined")
    assert "failed validation and was quarantined" in run["reasons"][0]
    saved = json.loads((a / ".mlops" / "services.json").read_text())
    assert saved["ports"] == A_PORTS and saved["project"] == str(a)
    # The human view shows the outcome and why.
    text = mlops(a, "runs", "recipe=churn").stdout
    assert "mlops-up" in text and "quarantined" in text and "failed validation" in text


def test_plain_commands_find_the_remembered_services(projects):
    a, _b = projects
    proc = mlops(a, "status", "recipe=churn", "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["services"]["prefect"]["healthy"] and st["services"]["prefect"]["api_url"].endswith(":4740/api")
    assert st["services"]["triton"]["healthy"] and st["services"]["triton"]["url"].endswith(":8740")
    plan = json.loads(mlops(a, "plan", "recipe=churn", "--json").stdout)["plan"]
    assert [s["action"] for s in plan["services"]] == ["reuse", "reuse"]


def test_other_ports_given_while_the_remembered_services_run_are_noted(projects):
    a, _b = projects
    proc = mlops(a, "status", "recipe=churn", "serving.http_port=8750", "--json")
    assert proc.returncode == 0, proc.stderr
    assert ("note: serving.http_port=8750 is given, but this project's services were started with "
            "serving.http_port=8740 and still run there") in " ".join(proc.stderr.split())
    assert json.loads(proc.stdout)["services"]["triton"]["url"].endswith(":8750")


def test_a_quarantining_manual_validate_is_in_the_history(projects):
    a, _b = projects
    assert mlops(a, "run", "ingest", *TINY).returncode == 0
    proc = mlops(a, "run", "validate", *TINY, task_failure=True)
    assert proc.returncode == 3, proc.stderr
    runs = _runs(a)
    assert [(r["flow"], r["steps"], r.get("outcome")) for r in runs[1:]] == [
        ("mlops-step", ["ingest"], None), ("mlops-step", ["validate"], "quarantined")]
    assert "failed validation and was quarantined" in runs[2]["reasons"][0]


def test_another_projects_services_are_never_reused(projects):
    a, b = projects
    proc = mlops(b, "plan", "recipe=churn", *_overrides(A_PORTS))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert f"service prefect blocked http://127.0.0.1:4740/api prefect on port 4740 (target.prefect.port) belongs " \
           f"to another project (state directory {a / '.mlops'}), so it is not reused" in text
    assert f"triton on port 8740 (serving.http_port) belongs to another project (state directory {a / '.mlops'})" \
        in text
    assert f"`mlops -C {a} down`" in text
    st = json.loads(mlops(b, "status", "recipe=churn", *_overrides(A_PORTS), "--json").stdout)
    assert not st["services"]["prefect"]["healthy"] and not st["services"]["triton"]["healthy"]
    assert "belongs to another project" in st["services"]["triton"]["foreign"] and st["models"] == []
    proc = mlops(b, "up", "recipe=churn", *_overrides(A_PORTS))
    assert proc.returncode == 4, proc.stderr
    assert "belongs to another project" in proc.stderr and "target.prefect.port=4840" in proc.stderr
    (run,) = _runs(b)
    assert run["outcome"] == "failed" and "belongs to another project" in run["reasons"][0]
    assert not (b / ".mlops" / "services.json").exists()


def test_a_plain_down_stops_the_remembered_services(projects):
    a, _b = projects
    proc = mlops(a, "down", "recipe=churn", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"triton": True, "prefect": True}
    assert all(port_free("127.0.0.1", p) for p in A_PORTS.values())
    assert not (a / ".mlops" / "services.json").exists()
