"""How flow runs start. The project's runner starts a triggered run (mlops.flows._serve) forked from the warm
forkserver, with the environment Prefect would give `python -m prefect.engine` and the flow's entrypoint, so the
run imports the flow instead of reading its deployment back from the API; what the forkserver preloads exists.
A run the CLI starts itself sends its parameters as the same JSON Prefect would, without importing FastAPI."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest

from mlops import flavors
from mlops.flows import _serve
from mlops.plan import compile_plan
from mlops.recipe import load

ROOT = Path(__file__).resolve().parents[1]


def _started_env(monkeypatch, entrypoints, deployment_id):
    """The environment _WarmStarter gives the forked run, captured instead of forking."""
    seen = {}

    class Process:
        def __init__(self, target, args, name):
            seen["target"], (seen["env"], seen["cwd"]) = target, args

        def start(self):
            pass

        def join(self):
            pass

    monkeypatch.setattr(_serve.multiprocessing, "get_context", lambda kind: SimpleNamespace(Process=Process))
    engine = SimpleNamespace(_control_channel=None, _env={"PREFECT__DEPLOYMENT_NAME": "x"}, _deployment_name="x",
                             _tmp_dir=None, _heartbeat_seconds=None, _storage=None, _cwd=str(ROOT))
    run = SimpleNamespace(id=uuid4(), name="a-run", deployment_id=deployment_id)
    asyncio.run(_serve._WarmStarter(engine, entrypoints).start(run))
    assert seen["target"] is _serve._run_engine and seen["cwd"] == str(ROOT)
    return seen["env"]


def test_a_run_of_a_known_deployment_is_handed_its_flow_entrypoint(monkeypatch):
    ours, other = uuid4(), uuid4()
    entrypoints = {ours: "mlops.flows._train.train_flow"}
    env = _started_env(monkeypatch, entrypoints, ours)
    assert env["PREFECT__FLOW_ENTRYPOINT"] == "mlops.flows._train.train_flow"
    assert env["PREFECT__FLOW_RUN_ID"] and env["PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS"] == "false"
    # A deployment the runner did not add itself: Prefect reads it from the API, as before.
    assert "PREFECT__FLOW_ENTRYPOINT" not in _started_env(monkeypatch, entrypoints, other)


def test_every_deployment_entrypoint_loads_its_flow_the_way_the_engine_does():
    """What the runner hands a run is what Prefect's engine loads with PREFECT__FLOW_ENTRYPOINT set
    (prefect.flow_engine.load_flow): the same flow object the deployment was made from."""
    from prefect.flow_engine import _load_flow_from_runtime_entrypoint

    cfg = load(["recipe=churn", "maturity=4"], ROOT, check_data=False)
    plan = compile_plan(cfg)
    deployments = asyncio.run(_serve.runner_deployments(plan, cfg, str(ROOT), str(ROOT / ".mlops")))
    assert {d.name for d in deployments} == {d.name for d in plan.deployments} and len(deployments) >= 3
    for dep, planned in zip(deployments, plan.deployments):
        flow = _load_flow_from_runtime_entrypoint(dep.entrypoint)
        assert flow.name == planned.flow == dep.flow_name


def test_what_the_forkserver_preloads_exists():
    """A misspelt preload is skipped in silence by the forkserver and `up`'s import thread; here it fails."""
    names = [*_serve.WARM_MODULES]
    for by_name in flavors.registered().values():
        for flavor in by_name.values():
            names += [flavor.implementation.partition(":")[0], *flavor.warm]
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"{name}: {exc}")


def test_a_new_runs_parameters_are_the_json_prefect_would_send():
    from prefect.flows import Flow

    from mlops.flows import up_flow

    cfg = load(["recipe=churn", "maturity=4"], ROOT, check_data=False)
    params = {"cfg": cfg, "project": str(ROOT), "state_dir": str(ROOT / ".mlops"), "progress": False}
    ours = up_flow.serialize_parameters(params)
    assert ours == Flow.serialize_parameters(up_flow, params)  # Prefect's own: FastAPI's jsonable_encoder
    assert ours["cfg"]["name"] == "churn" and ours["cfg"]["maturity"]["level"] == 4
    # A value that is neither a pydantic model nor JSON goes Prefect's way, and so does one pydantic cannot encode.
    odd = {"cfg": cfg, "when": {1, 2}}
    assert up_flow.serialize_parameters(odd) == Flow.serialize_parameters(up_flow, odd)
    unencodable = {"cfg": cfg, "rows": [object()]}
    assert up_flow.serialize_parameters(unencodable) == Flow.serialize_parameters(up_flow, unencodable)


def test_starting_a_flow_run_does_not_import_fastapi(tmp_path):
    """In a fresh interpreter: defining the flows and serializing a run's parameters leaves FastAPI unimported
    (Prefect's own encoder would import it: 0.2 s of every `mlops up`)."""
    code = (
        "import sys; from pathlib import Path; from mlops.recipe import load; from mlops.flows import up_flow\n"
        f"cfg = load(['recipe=churn'], Path({str(ROOT)!r}), check_data=False)\n"
        "up_flow.serialize_parameters({'cfg': cfg, 'project': '.', 'state_dir': '.', 'progress': False})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fastapi'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_an_event_is_waited_for_until_sent_and_no_longer(monkeypatch):
    """_emit returns once Prefect's events worker has sent what is queued, or after the bound if it cannot."""
    import threading
    import time

    import prefect.events
    from prefect.events.worker import EventsWorker

    from mlops.flows import _pipeline

    emitted, release = [], threading.Event()

    class Worker:
        def wait_until_empty(self):
            release.wait()

    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: emitted.append(kw) or kw)
    monkeypatch.setattr(EventsWorker, "instance", classmethod(lambda cls, *a: Worker()))
    threading.Timer(0.3, release.set).start()
    t0 = time.perf_counter()
    _pipeline._emit("mlops.drift.detected", "mlops.model.churn", {"window": 1})
    assert 0.25 < time.perf_counter() - t0 < 3 and emitted[0]["event"] == "mlops.drift.detected"
    release.clear()  # a worker that never empties its queue (no server): the flow goes on after the bound
    monkeypatch.setattr(_pipeline, "_EVENT_SEND_WAIT_S", 0.2)
    t0 = time.perf_counter()
    _pipeline._emit("mlops.drift.detected", "mlops.model.churn", {"window": 2})
    assert 0.15 < time.perf_counter() - t0 < 2
    release.set()
    # An event that was not queued (events off) is not waited for.
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: None)
    monkeypatch.setattr(EventsWorker, "instance", classmethod(lambda cls, *a: pytest.fail("waited for nothing")))
    _pipeline._emit("mlops.drift.detected", "mlops.model.churn", {"window": 3})


@pytest.mark.parametrize(("services_up", "thread"), [(False, True), (True, False)])
def test_up_loads_the_step_libraries_on_a_thread_only_while_the_services_start(monkeypatch, tmp_path, services_up,
                                                                                  thread):
    """While the Prefect server and the model server start there is a wait to fill; with both up, a thread
    importing beside the flow only takes turns on the GIL with it (bench/up.py: 0.25-0.45 s per `up`)."""
    import threading

    from mlops.targets import _local

    cfg = load(["recipe=breast_cancer"], ROOT, check_data=False)
    target = _local.LocalTarget(cfg, tmp_path)
    started = []

    class Stop(Exception):
        pass

    class Thread(threading.Thread):
        def start(self):
            started.append(self.name)  # recorded, not run: no imports in this test's process

    def stop(*args):
        raise Stop

    monkeypatch.setattr(_local, "threading", SimpleNamespace(Thread=Thread))  # this module's threads only
    monkeypatch.setattr(_local._prefect, "healthy", lambda url: services_up)
    monkeypatch.setattr(type(target.server), "live", lambda self: services_up)
    monkeypatch.setattr(type(target.server), "start", lambda self: None)
    monkeypatch.setattr(target, "foreign_services", dict)
    monkeypatch.setattr(target, "_ensure_prefect", lambda: None)
    monkeypatch.setattr(target, "_recover", lambda console: None)
    monkeypatch.setattr(target, "tracking_ui", lambda: None)
    monkeypatch.setattr(target, "up_to_date", lambda: None)
    monkeypatch.setattr(_local._services, "remember", lambda *args: None)
    monkeypatch.setattr(_local._prefect, "prefect_env", stop)  # where the flow is about to start: stop there
    with pytest.raises(Stop):
        target._up(progress=False, rerun=False)
    assert ("mlops-warm-imports" in started) is thread


@pytest.mark.parametrize(("user", "seen"), [(None, "true"), ("false", "false")])
def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on(tmp_path, user, seen):
    code = ("import os; import mlops.tracking._mlflow; from mlflow.telemetry.client import get_telemetry_client\n"
            "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client() is None)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    if user is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = user
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    value, no_client = out.stdout.split()[-2:]
    assert value == seen
    if user is None:
        assert no_client == "True"  # no telemetry client, so no threads of its own
