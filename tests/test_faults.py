"""Faults survived, against the real services (Prefect server, Lightning, Triton, MLflow), through the CLI.

Two projects with ports of their own: A is the clean run (and the lock, Triton and Prefect faults), B is killed
mid-training and resumed. The tests run in order and share the projects.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlops._layout import Layout
from mlops._process import port_free
from tests.test_resume import last_epoch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e
# Long enough to be killed mid-way, no early stop: both projects train exactly EPOCHS epochs.
EPOCHS = 40
RECIPE = ("recipe=breast_cancer", f"model.max_epochs={EPOCHS}", "model.early_stopping.enabled=false")
# MLOPS_FAULTS_PORTS="prefect,http,grpc,metrics/prefect,http,grpc,metrics" moves A's and B's (a second checkout).
PORTS = dict(zip("AB", (tuple(int(p) for p in ports.split(",")) for ports in os.environ.get(
    "MLOPS_FAULTS_PORTS", "4760,8760,8761,8762/4761,8763,8764,8765").split("/"))))


def _ports(name: str) -> list[str]:
    p = PORTS[name]
    return [f"target.prefect.port={p[0]}", f"serving.http_port={p[1]}", f"serving.grpc_port={p[2]}",
            f"serving.metrics_port={p[3]}"]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PYTHONPATH": str(ROOT)}


def _argv(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mlops.cli", *args, *_ports(name)]


def mlops(project: Path, name: str, *args: str, check: bool = True, timeout: float = 600):
    proc = subprocess.run(_argv(name, *args), cwd=project, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"mlops {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def spawn(project: Path, name: str, *args: str) -> subprocess.Popen:
    """`mlops ...` in the background, in its own process group (so a test can kill -9 all of it)."""
    return subprocess.Popen(_argv(name, *args), cwd=project, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _versions(project: Path) -> list[str]:
    vdir = Layout(project / ".mlops").registry / "breast_cancer" / "versions"
    return sorted(p.name for p in vdir.iterdir() if p.name.isdigit()) if vdir.is_dir() else []


def _lineage(project: Path, version: int) -> dict:
    return json.loads((Layout(project / ".mlops").registry / "breast_cancer" / "versions" / str(version)
                       / "lineage.json").read_text())


def _training_ckpts(project: Path) -> list[Path]:
    return list((project / ".mlops").glob("training/breast_cancer/*/last.ckpt"))


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    busy = [p for ports in PORTS.values() for p in ports if not port_free("127.0.0.1", p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; stop what holds them")
    made = {}
    for name in PORTS:
        proj = tmp_path_factory.mktemp(f"project{name}")
        shutil.copytree(ROOT / "recipes", proj / "recipes")
        made[name] = proj
    yield made
    for name, proj in made.items():
        mlops(proj, name, "down", "recipe=breast_cancer", check=False)


def test_a_second_up_fails_fast_naming_the_first_and_waits_with_wait(projects):
    a = projects["A"]
    first = spawn(a, "A", "up", *RECIPE)
    lock = Layout(a / ".mlops").lock_holder
    deadline = time.monotonic() + 60
    while not lock.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    t0 = time.monotonic()
    second = mlops(a, "A", "up", *RECIPE, check=False)
    assert time.monotonic() - t0 < 15  # the config load and imports; no waiting on the first
    assert second.returncode == 8, second.stderr
    assert "mlops: project busy" in second.stderr
    assert f"pid {first.pid} (`mlops up recipe=breast_cancer model.max_epochs={EPOCHS}" in second.stderr
    assert "add --wait to wait for it" in second.stderr and "Traceback" not in second.stderr
    # Read-only commands work meanwhile.
    assert mlops(a, "A", "runs", "recipe=breast_cancer").returncode == 0

    waiting = mlops(a, "A", "up", *RECIPE, "--wait")
    assert f"waiting for pid {first.pid}" in waiting.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert "breast_cancer version 1 is READY (new version)" in err
    assert "unchanged, nothing retrained" in waiting.stderr
    assert _versions(a) == ["1"] and _lineage(a, 1)["epochs"] == EPOCHS


def test_an_up_killed_mid_training_resumes_and_registers_one_version(projects):
    b = projects["B"]
    proc = spawn(b, "B", "up", *RECIPE)
    deadline = time.monotonic() + 300
    at = None
    while time.monotonic() < deadline and proc.poll() is None:
        ckpts = _training_ckpts(b)
        if ckpts and (at := last_epoch(ckpts[0])) is not None and at >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert at is not None and at >= 2 and proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert at < EPOCHS - 2
    assert _versions(b) == []
    snapshots_before = sorted(p.name for p in (b / ".mlops/datasets/breast_cancer").glob("*.parquet"))

    again = mlops(b, "B", "up", *RECIPE)  # the killed one's lock is free: no --wait needed
    assert f"resuming training after epoch {at + 1} of {EPOCHS}" in again.stderr, again.stderr
    assert "marked Crashed: " in again.stderr  # the killed up's flow run
    assert "breast_cancer version 1 is READY (new version)" in again.stderr
    assert _versions(b) == ["1"]
    assert sorted(p.name for p in (b / ".mlops/datasets/breast_cancer").glob("*.parquet")) == snapshots_before
    clean, resumed = _lineage(projects["A"], 1), _lineage(b, 1)
    assert resumed["key"] == clean["key"] and resumed["epochs"] == EPOCHS
    for k in ("val_loss", "test_loss", "test_acc", "test_auc"):
        assert resumed["metrics"][k] == pytest.approx(clean["metrics"][k], abs=2e-3), k
    assert not _training_ckpts(b)


def test_triton_killed_is_reported_and_up_restores_the_champion_without_training(projects):
    a = projects["A"]
    pid = int(Layout(a / ".mlops").pid("triton").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    st = json.loads(mlops(a, "A", "status", "recipe=breast_cancer", "--json").stdout)
    assert st["services"]["triton"]["healthy"] is False and st["models"] == []
    assert "down" in mlops(a, "A", "status", "recipe=breast_cancer").stdout

    up = mlops(a, "A", "up", *RECIPE)
    assert "breast_cancer version 1 is READY (unchanged, nothing retrained)" in up.stderr
    assert "✓ train" not in up.stderr and _versions(a) == ["1"]
    rows = json.loads(mlops(a, "A", "predict", "recipe=breast_cancer", "--input",
                            "recipes/data/breast_cancer_rows.csv", "--json").stdout)
    assert rows["version"] == 1 and len(rows["labels"]) == 5


def test_prefect_killed_mid_run_is_recovered_by_the_next_up(projects):
    a = projects["A"]
    changed = (*RECIPE, "model.lr=0.003")  # a new training key: this up trains
    proc = spawn(a, "A", "up", *changed)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not _training_ckpts(a):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    prefect_pid = int(Layout(a / ".mlops").pid("prefect").read_text())
    os.killpg(prefect_pid, signal.SIGKILL)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:  # stuck retrying a dead API: what a user would then do
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    err = proc.stderr.read()
    assert _versions(a) in (["1"], ["1", "2"]), err

    up = mlops(a, "A", "up", *changed)
    assert "marked Crashed: " in up.stderr or proc.returncode == 0, up.stderr
    assert "breast_cancer version 2 is READY" in up.stderr
    assert _versions(a) == ["1", "2"]
    statuses = json.loads(mlops(a, "A", "status", "recipe=breast_cancer", "--json").stdout)["registry"]["versions"]
    assert all(v["status"] != "candidate" for v in statuses)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def test_at_level_3_the_runner_restarts_a_killed_triton_with_the_champion_within_30s(projects):
    a = projects["A"]
    changed = (*RECIPE, "model.lr=0.003")  # the config the previous test served as version 2
    up = mlops(a, "A", "up", *changed, "maturity=3")
    assert "champion breast_cancer@2 is served" in up.stderr and "runner    serving" in up.stderr, up.stderr
    st = json.loads(mlops(a, "A", "status", "recipe=breast_cancer", "--json").stdout)
    assert st["watchdog"]["status"] == "watching" and st["watchdog"]["pid"] == st["runner"]["pid"]
    loaded = sorted(m["version"] for m in st["models"] if m["state"] == "READY")
    assert loaded == ["1", "2"]  # the champion, and the previous one kept for rollback

    layout = Layout(a / ".mlops")
    pid = int(layout.pid("triton").read_text())
    ready = f"http://127.0.0.1:{PORTS['A'][1]}/v2/models/breast_cancer/ready"
    assert _ready(ready)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while not (_ready(ready) and int(layout.pid("triton").read_text()) != pid) and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    back_s = time.monotonic() - t0
    assert back_s < 30, f"not serving again 30 s after the kill\n{tail_log(layout, 'runner-breast_cancer')}"

    rows = json.loads(mlops(a, "A", "predict", "recipe=breast_cancer", "--input",
                            "recipes/data/breast_cancer_rows.csv", "--json").stdout)
    assert rows["version"] == 2 and len(rows["labels"]) == 5
    st = json.loads(mlops(a, "A", "status", "recipe=breast_cancer", "--json").stdout)
    assert sorted(m["version"] for m in st["models"] if m["state"] == "READY") == ["1", "2"]
    assert _versions(a) == ["1", "2"]  # nothing retrained, nothing registered
    wd = st["watchdog"]
    assert wd["status"] == "watching" and wd["last_restart"]["attempt"] == 1
    assert wd["last_restart"]["champion"] == 2 and wd["last_restart"]["loaded"] == [1, 2]
    assert "watchdog watching (last restart: triton down" in mlops(a, "A", "status", "recipe=breast_cancer").stdout
    # The event, on the model's resource, on the project's Prefect server (its event stream is asynchronous).
    filt = json.dumps({"filter": {"event": {"name": ["mlops.server.restarted"]}}}).encode()
    api = f"http://127.0.0.1:{PORTS['A'][0]}/api/events/filter"
    deadline, events = time.monotonic() + 20, []
    while not events and time.monotonic() < deadline:
        req = urllib.request.Request(api, data=filt, method="POST", headers={"Content-Type": "application/json"})
        events = json.loads(urllib.request.urlopen(req, timeout=10).read())["events"]
        time.sleep(0.5)
    assert [(e["resource"]["prefect.resource.id"], e["payload"]["champion"], e["payload"]["loaded"])
            for e in events] == [("mlops.model.breast_cancer", 2, [1, 2])]
    log = layout.log("runner-breast_cancer").read_text()
    assert "triton is down (2 failed health checks <maturity.watchdog.misses=2>)" in log
    assert "breast_cancer@2 answers, versions loaded [1, 2] (nothing retrained)" in log
    print(f"serving again {back_s:.1f} s after SIGKILL")


def tail_log(layout: Layout, service: str) -> str:
    from mlops._process import tail

    return tail(layout.log(service), 30)
