"""Levels 1-3 live: a real Prefect server and runner, Lightning and Triton; nobody calls mlops after `up`.

One project (a copy of recipes/, churn reading data/churn.csv) and one set of services for the module,
on ports of its own. The tests run in order: level 1, 2, 3, rollback, 4 (drift -> retrain -> gate ->
redeploy, then garbage), back down to 1 and 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mlops._process import port_free
from _client_thread import ClientThread
from _live import prefect_events, wait_for

ROOT = Path(__file__).resolve().parents[1]
PREFECT_PORT, HTTP, GRPC, METRICS = 4310, 8310, 8311, 8312
COMMON = ["recipe=churn", "data.path=data/churn.csv", f"target.prefect.port={PREFECT_PORT}",
          f"serving.http_port={HTTP}", f"serving.grpc_port={GRPC}", f"serving.metrics_port={METRICS}",
          "maturity.data_interval_s=10", "maturity.gate.metric=test_auc", "+maturity.gate.floors.test_auc=0.6",
          # Short traffic windows, judged at level 4 as they close; half the served rows profiled.
          "monitoring.window_s=4", "monitoring.sample_rate=0.5", "monitoring.drift.repeat_after_windows=200",
          "model.max_epochs=10"]  # enough to tell a real model from one trained on shuffled labels
API = f"http://127.0.0.1:{PREFECT_PORT}/api"
pytestmark = pytest.mark.e2e


def mlops(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"mlops {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def drop(project: Path, frame: pd.DataFrame) -> None:
    """A new file lands in the data location (written beside it, then renamed in, as an upload would)."""
    tmp = project / "data" / ".incoming.csv"
    frame.to_csv(tmp, index=False)
    tmp.replace(project / "data" / "churn.csv")


def shuffled(seed: int) -> pd.DataFrame:
    data = pd.read_csv(ROOT / "recipes/data/churn.csv")
    data["churned"] = data["churned"].sample(frac=1, random_state=seed).to_numpy()
    return data


def real(rows: int) -> pd.DataFrame:
    return pd.read_csv(ROOT / "recipes/data/churn.csv").head(rows)


def shifted_up(frame: pd.DataFrame) -> pd.DataFrame:
    """A real shift, not garbage: monthly charges tripled (still positive, same categories)."""
    frame = frame.copy()
    frame["monthly_charges"] *= 3
    return frame


class Client(ClientThread):
    """A client thread calling the served model (the documented helper, tritonclient) the whole time."""

    def __init__(self, project: Path, frame: pd.DataFrame):
        super().__init__()
        self.project, self.frame = project, frame

    def _run(self) -> None:
        from mlops.serving._client import predict

        signature = json.loads((self.project / ".mlops/exports/churn/1/signature.json").read_text())
        i = 0
        while not self.stopped():
            rows = self.frame.iloc[i % len(self.frame): i % len(self.frame) + 4]
            try:
                predict(f"127.0.0.1:{HTTP}", "churn", signature, rows[signature_columns(signature)])
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.errors.append(repr(exc))
            i += 4
            time.sleep(0.02)


def signature_columns(signature: dict) -> list[str]:
    return [c for spec in signature["inputs"] for c in spec["columns"]]


def runs(project: Path) -> list[dict]:
    return json.loads(mlops(project, "runs", *COMMON, "--json").stdout)


def events(name: str) -> list[dict]:
    return prefect_events(API, name)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    busy = [p for p in (PREFECT_PORT, HTTP, GRPC, METRICS) if not port_free("127.0.0.1", p)]
    if busy:
        pytest.fail(f"ports {busy} are in use")
    proj = tmp_path_factory.mktemp("live")
    shutil.copytree(ROOT / "recipes", proj / "recipes")
    (proj / "data").mkdir()
    drop(proj, shuffled(1))  # a deliberately poor first champion
    yield proj
    mlops(proj, "down", *COMMON, check=False)


def snapshots(project: Path) -> dict:
    p = project / ".mlops/datasets/churn/index.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def registry(project: Path) -> dict:
    return json.loads(mlops(project, "status", *COMMON, "--json").stdout)["registry"]


def served(project: Path) -> set[str]:
    """The version that answers (the highest READY one; the previous champion may stay loaded for rollback)."""
    st = json.loads(mlops(project, "status", *COMMON, "--json").stdout)
    ready = [int(m["version"]) for m in st["models"] if m["name"] == "churn" and m["state"] == "READY"]
    return {str(max(ready))} if ready else set()


def server_state(project: Path) -> dict:
    """Deployments and automations of the recipe on the Prefect server, read with the Prefect client."""
    code = f"""
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        deps = [d for d in await c.read_deployments() if "mlops.recipe:churn" in d.tags]
        autos = await c.read_automations()
        out = {{"deployments": {{}}, "automations": {{}}}}
        for d in deps:
            interval = [s.schedule.interval.total_seconds() for s in d.schedules if s.active]
            limit = d.global_concurrency_limit.limit if d.global_concurrency_limit else None
            strategy = d.concurrency_options.collision_strategy.value if d.concurrency_options else None
            out["deployments"][d.name] = {{"interval_s": interval[0] if interval else None, "flow": (await c.read_flow(d.flow_id)).name,
                                           "release": d.parameters.get("release"), "limit": limit, "on_collision": strategy}}
        for a in autos:
            owner = a.actions[0].deployment_id if a.actions else None
            name = next((d.name for d in deps if d.id == owner), None)
            if name:
                out["automations"][a.name] = {{"deployment": name, "event": sorted(a.trigger.expect)[0],
                                               "resource": a.trigger.match.model_dump()["prefect.resource.id"],
                                               "enabled": a.enabled}}
        print(json.dumps(out))
asyncio.run(main())
"""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PREFECT_API_URL": API,
           "PREFECT_HOME": str(project / ".mlops/prefect")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def expected_state(level: int, *extra: str) -> dict:
    from mlops.plan import compile_plan
    from mlops.recipe import load

    plan = compile_plan(load([*COMMON, f"maturity={level}", *extra], ROOT, check_data=False))
    collision = {"skip": "CANCEL_NEW", "queue": "ENQUEUE"}
    return {"deployments": {d.name: {"interval_s": d.interval_s, "flow": d.flow, "release": d.parameters.get("release"),
                                     "limit": 1, "on_collision": collision[d.on_overlap]} for d in plan.deployments},
            "automations": {a.name: {"deployment": a.deployment, "event": a.event, "resource": a.resource,
                                     "enabled": True} for a in plan.automations}}


def test_level_1_new_file_gives_a_validated_snapshot_and_no_training(project):
    proc = mlops(project, "up", *COMMON, "maturity=1")
    assert "churn version 1 is READY (new version)" in proc.stderr
    assert server_state(project) == expected_state(1)
    before = set(snapshots(project))
    drop(project, real(1000))
    new = wait_for("a new validated snapshot", lambda: set(snapshots(project)) - before)
    (fp,) = new
    assert snapshots(project)[fp]["rows"] == 1000 and snapshots(project)[fp]["trigger"] == "schedule"
    time.sleep(3)
    assert [v["version"] for v in registry(project)["versions"]] == [1]  # training stays manual
    runs = json.loads(mlops(project, "runs", *COMMON, "--json").stdout)
    assert any(r["flow"] == "mlops-data" and r["outcome"] == "new snapshot" and r["trigger"] == "schedule"
               for r in runs)


def test_level_2_new_file_trains_a_registered_version_that_is_not_served(project):
    mlops(project, "up", *COMMON, "maturity=2")
    assert server_state(project) == expected_state(2)
    drop(project, real(1100))
    reg = wait_for("version 2", lambda: r if len((r := registry(project))["versions"]) >= 2 else None)
    assert reg["versions"][1]["status"] == "registered" and reg["champion"] == 1
    assert served(project) == {"1"}
    runs = json.loads(mlops(project, "runs", *COMMON, "--json").stdout)
    (train_run,) = [r for r in runs if r["flow"] == "mlops-train"]
    assert train_run["trigger"] == "event:mlops.dataset.validated" and train_run["outcome"] == "registered"


def test_diff_2_to_3_then_level_3_deploys_a_better_candidate_and_rejects_a_worse(project):
    diff = json.loads(mlops(project, "plan", *COMMON, "maturity=3", "--diff", "maturity=2", "--json").stdout)["diff"]
    mlops(project, "up", *COMMON, "maturity=3")
    state = server_state(project)
    assert state == expected_state(3)
    # Only what the diff says changed: the training deployment now releases; the automation is the same.
    assert state["automations"] == expected_state(2)["automations"] and "automations" not in diff
    drop(project, real(1200))
    wait_for("version 3 served", lambda: served(project) == {"3"})
    reg = registry(project)
    assert reg["champion"] == 3 and reg["versions"][2]["status"] == "registered"

    drop(project, shuffled(2))
    reg = wait_for("version 4 judged", lambda: r if len((r := registry(project))["versions"]) >= 4 and
                   r["versions"][3]["status"] != "candidate" else None)
    v4 = reg["versions"][3]
    assert v4["status"] == "rejected" and reg["champion"] == 3 and served(project) == {"3"}
    assert any("test_auc=" in r and "below the floor 0.6" in r for r in v4["reasons"]), v4
    assert any("does not beat the champion's" in r for r in v4["reasons"]), v4
    text = mlops(project, "status", *COMMON).stdout
    assert "version  churn@4 rejected: test_auc=" in text
    runs = json.loads(mlops(project, "runs", *COMMON, "--json").stdout)
    gated = [r for r in runs if r.get("gate")]
    assert [(r["version"], r["outcome"]) for r in gated] == [(3, "deployed"), (4, "rejected")]
    # The rejection is a Prefect event too.
    rejected = events("mlops.gate.rejected")
    assert [e["payload"]["version"] for e in rejected] == [4]
    assert rejected[0]["resource"]["prefect.resource.id"] == "mlops.model.churn"


def test_rollback_restores_the_previous_champion_on_triton_under_load(project):
    with Client(project, real(1200)) as client:
        time.sleep(2)
        proc = mlops(project, "rollback", "churn", *COMMON)
        time.sleep(2)
    assert "churn: rolled back from version 3 to 1" in proc.stdout
    assert client.errors == [] and client.ok > 20, (client.ok, client.errors[:3])
    assert served(project) == {"1"} and registry(project)["champion"] == 1
    proc = mlops(project, "rollback", "churn", *COMMON, check=False)
    assert proc.returncode == 6 and "has no previous champion to roll back to" in proc.stderr


LEVEL_4 = ["maturity=4", "maturity.data_interval_s=3600"]  # new data reaches training only through the drift loop


def test_level_4_drift_retrains_gates_and_redeploys_while_a_client_sees_no_failure(project):
    mlops(project, "up", *COMMON, *LEVEL_4)
    assert server_state(project) == expected_state(4, *LEVEL_4)
    before = len(registry(project)["versions"])
    champion = registry(project)["champion"]  # 1, trained on shuffled labels: the retrain must beat it
    drop(project, shifted_up(real(1200)))  # new data with the same shift waits in the data location
    traffic = project / "shifted.csv"
    shifted_up(real(1200)).drop(columns=["churned"]).sample(600, random_state=0).to_csv(traffic, index=False)
    with Client(project, shifted_up(real(1200))) as client:
        for _ in range(3):
            mlops(project, "predict", *COMMON, "--input", str(traffic))
        new = before + 1
        wait_for(f"version {new} served", lambda: served(project) == {str(new)}, timeout=300)
        time.sleep(2)
    assert client.errors == [] and client.ok > 50, (client.ok, client.errors[:3])
    history = runs(project)
    (detected,) = [r for r in history if r["flow"] == "mlops-monitor" and r["outcome"] == "drift detected"]
    assert detected["version"] == champion and "monthly_charges" in detected["drifted"]
    (retrain,) = [r for r in history if r["flow"] == "mlops-train" and r["trigger"] == "event:mlops.drift.detected"]
    assert retrain["outcome"] == "deployed" and retrain["version"] == new
    assert retrain["drift_window"] == detected["window"] and retrain["gate"]["champion_version"] == champion
    (event,) = events("mlops.drift.detected")
    assert event["resource"]["prefect.resource.id"] == "mlops.model.churn"
    assert event["payload"]["window"] == detected["window"] and event["payload"]["scores"]["monthly_charges"] >= 0.4
    assert registry(project)["champion"] == new


def test_level_4_garbage_traffic_is_quarantined_and_trains_nothing(project):
    versions = len(registry(project)["versions"])
    champion = registry(project)["champion"]
    garbage = shifted_up(real(1200)).drop(columns=["churned"]).head(600)
    garbage["tenure_months"] = -garbage["tenure_months"] - 50  # impossible, and far from the reference
    garbage["contract"] = "zz-unknown"
    path = project / "garbage.csv"
    garbage.to_csv(path, index=False)
    for _ in range(2):
        mlops(project, "predict", *COMMON, "--input", str(path))
    # The garbage's window, named by its column. Not necessarily the first window quarantined: a short window of
    # the real traffic before it can fail the recipe's null bound by chance (2 nulls in 33 rows of data_gb is 6%).
    bad = wait_for("the garbage's traffic window quarantined", lambda: [
        r for r in runs(project) if r.get("outcome") == "quarantined traffic"
        and any("tenure_months" in reason for reason in r["reasons"])])
    assert bad[0]["version"] == champion
    assert (project / ".mlops/quarantine/churn").is_dir()
    time.sleep(8)  # two more monitor runs: nothing else happens
    assert [e["payload"]["version"] for e in events("mlops.drift.detected")] != [] and all(
        e["payload"]["version"] != champion for e in events("mlops.drift.detected"))
    assert len(registry(project)["versions"]) == versions and registry(project)["champion"] == champion
    assert events("mlops.traffic.quarantined")[0]["payload"]["version"] == champion


def test_moving_down_removes_the_automations(project):
    mlops(project, "up", *COMMON, "maturity=1")
    assert server_state(project) == expected_state(1)
    mlops(project, "up", *COMMON, "maturity=0")
    assert server_state(project) == {"deployments": {}, "automations": {}}
