"""Trackers against real backends: MLflow on sqlite in tmp_path, neptune offline/debug."""

from __future__ import annotations

import base64
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

import mlops.tracking
from mlops.errors import TargetUnavailable
from mlops.recipe.schema import MlflowTracking, NeptuneTracking
from mlops.tracking import flatten_params, make_tracker

PARAMS = {"model": {"lr": 0.001, "hidden": [64, 32]}, "seed": 42, "data": {"path": None}}
FLAT = {"model.lr": 0.001, "model.hidden": "[64, 32]", "seed": 42, "data.path": "None"}


def test_exported_members():
    assert mlops.tracking.__all__ == sorted(mlops.tracking.__all__)
    assert all(hasattr(mlops.tracking, name) for name in mlops.tracking.__all__)


def test_importing_the_package_imports_no_backend():
    code = "import sys, mlops.tracking; print(sorted(m for m in ('mlflow', 'neptune', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_flatten_params_dots_nested_keys_and_stringifies_non_scalars():
    assert flatten_params(PARAMS) == FLAT


class _TinyModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 0.1})
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(logger, root: Path, epochs: int = 3) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=logger,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(_TinyModel(), DataLoader(data, batch_size=16))


# ---------------------------------------------------------------- mlflow
def _mlflow(state_dir: Path, experiment: str = "churn"):
    return make_tracker(MlflowTracking(flavor="mlflow", experiment=experiment), state_dir)


@pytest.fixture(scope="session")
def mlflow_state(tmp_path_factory) -> Path:
    """One sqlite database for the session: creating one costs about 4 s of migrations."""
    return tmp_path_factory.mktemp("mlflow") / "state"


def test_mlflow_round_trip_in_sqlite_under_the_state_dir(mlflow_state, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = _mlflow(mlflow_state)
    run_id = tracker.start_run("churn-train", {"maturity": "2"})
    tracker.log_params(PARAMS)
    tracker.log_metrics({"val_loss": 0.5}, step=1)
    tracker.log_metrics({"val_loss": 0.25}, step=2)
    tracker.log_dict({"data": {"sha256": "abc"}}, "lineage.json")
    tracker.end_run("FINISHED")

    state = mlflow_state.resolve()
    uri = f"sqlite:///{state}/mlflow.db"
    assert tracker.ui_hint() == f"mlflow ui --backend-store-uri {uri}"
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "churn-train"
    assert run.data.tags["maturity"] == "2"
    assert run.data.params == {k: str(v) for k, v in FLAT.items()}
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    lineage = state / "mlartifacts" / run_id / "artifacts" / "lineage.json"
    assert json.loads(lineage.read_text()) == {"data": {"sha256": "abc"}}
    assert client.get_experiment_by_name("churn").artifact_location == str(state / "mlartifacts")
    assert not (tmp_path / "mlruns").exists()


def test_mlflow_creating_the_database_prints_nothing(tmp_path, capfd):
    tracker = _mlflow(tmp_path / "state")
    tracker.start_run("quiet", {})
    tracker.end_run("FINISHED")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_mlflow_second_run_reuses_the_experiment(mlflow_state):
    first, second = _mlflow(mlflow_state, "reuse"), _mlflow(mlflow_state, "reuse")
    ids = [t.start_run(f"run-{i}", {}) for i, t in enumerate((first, second))]
    client = first.client
    assert {client.get_run(i).info.experiment_id for i in ids} == {
        client.get_experiment_by_name("reuse").experiment_id
    }


def test_mlflow_lightning_logger_writes_epochs_into_the_open_run(mlflow_state, tmp_path):
    tracker = _mlflow(mlflow_state, "fit")
    run_id = tracker.start_run("fit", {})
    _fit(tracker.lightning_logger(), tmp_path)

    client = tracker.client
    assert client.get_run(run_id).info.status == "RUNNING"  # fit ending does not end the run
    assert len(client.get_metric_history(run_id, "train_loss")) == 3
    assert client.get_run(run_id).data.params["lr"] == "0.1"
    assert len(client.search_runs([client.get_experiment_by_name("fit").experiment_id])) == 1
    tracker.end_run("FAILED")
    assert client.get_run(run_id).info.status == "FAILED"


def test_making_a_tracker_has_no_side_effects_and_logging_needs_a_run(tmp_path):
    tracker = _mlflow(tmp_path / "state")
    assert tracker.ui_hint().startswith("mlflow ui --backend-store-uri sqlite:////")
    with pytest.raises(RuntimeError, match=r"call start_run\(\) first"):
        tracker.log_metrics({"x": 1.0})
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------- neptune
def _neptune(tmp_path: Path, mode: str = "offline"):
    return make_tracker(NeptuneTracking(flavor="neptune", project="team/churn", mode=mode), tmp_path / "state")


def _offline_ops(state: Path, run_id: str) -> tuple[Path, list[dict]]:
    (run_dir,) = (state / "neptune" / ".neptune" / "offline").glob(f"run__{run_id}__*")
    ops = [json.loads(line)["obj"] for log in sorted(run_dir.glob("data-*.log")) for line in log.read_text().splitlines()]
    return run_dir, ops


def test_neptune_offline_writes_under_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEPTUNE_DATA_DIRECTORY", raising=False)
    tracker = _neptune(tmp_path)
    run_id = tracker.start_run("churn-train", {"maturity": "2"})
    tracker.log_params(PARAMS)
    tracker.log_metrics({"val_loss": 0.5}, step=1)
    tracker.log_metrics({"val_loss": 0.25}, step=2)
    tracker.log_dict({"data": {"sha256": "abc"}}, "lineage.json")
    tracker.end_run("FAILED")

    run_dir, ops = _offline_ops(tmp_path / "state", run_id)
    params = {op["path"][1]: op["value"] for op in ops if op["path"][0] == "parameters"}
    assert params == FLAT
    losses = [(v["step"], v["value"]) for op in ops if op["path"] == ["metrics", "val_loss"] for v in op["values"]]
    assert losses == [(1, 0.5), (2, 0.25)]
    assert {"type": "AssignString", "path": ["sys", "name"], "value": "churn-train"} in ops
    assert ["maturity:2"] in [op["values"] for op in ops if op["path"] == ["sys", "tags"]]
    (upload,) = [op for op in ops if op["path"] == ["artifacts", "lineage.json"]]
    assert json.loads((run_dir / "upload_path" / upload["tmp_file_name"]).read_text()) == {"data": {"sha256": "abc"}}
    assert [op["value"] for op in ops if op["path"] == ["sys", "failed"]] == [False, True]
    assert not (tmp_path / ".neptune").exists()
    assert "NEPTUNE_DATA_DIRECTORY" not in os.environ
    assert "neptune sync --path" in tracker.ui_hint()


def test_neptune_lightning_logger_writes_epochs_into_the_open_run(tmp_path):
    tracker = _neptune(tmp_path, mode="debug")
    tracker.start_run("fit", {})
    logger = tracker.lightning_logger()
    _fit(logger, tmp_path)

    run = logger.experiment
    assert run is tracker.run
    assert len(run["metrics/train_loss"].fetch_values()) == 3
    assert run["parameters/lr"].fetch() == 0.1
    assert (logger.name, logger.version) == ("team/churn", tracker.run_id)
    tracker.end_run("FINISHED")


def test_neptune_adapter_never_uses_lightnings_neptune_logger(tmp_path):
    import mlops.tracking._neptune as adapter

    source = inspect.getsource(adapter)
    assert "NeptuneLogger(" not in source and "loggers.neptune" not in source
    tracker = _neptune(tmp_path, mode="debug")
    tracker.start_run("x", {})
    bases = [f"{c.__module__}.{c.__qualname__}" for c in type(tracker.lightning_logger()).__mro__]
    tracker.end_run("FINISHED")
    assert "lightning.pytorch.loggers.logger.Logger" in bases
    assert not [b for b in bases if "neptune" in b.lower() and not b.startswith("mlops.")]


def _token(api_address: str) -> str:
    return base64.b64encode(json.dumps({"api_address": api_address, "api_key": "k"}).encode()).decode()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NEPTUNE_SERVER_URL": "https://neptune.corp"},
            "<tracking.mode=async> needs a Neptune API token in the environment variable NEPTUNE_API_TOKEN "
            "<tracking.api_token_env=NEPTUNE_API_TOKEN>, and it is not set. "
            "Export it, or use tracking.mode=offline.",
        ),
        (
            {"NEPTUNE_API_TOKEN": _token("https://neptune.corp")},
            "<tracking.mode=async> needs the URL of a self-hosted Neptune server in the environment variable "
            "NEPTUNE_SERVER_URL <tracking.server_url_env=NEPTUNE_SERVER_URL>, and it is not set. "
            "Export it, or use tracking.mode=offline.",
        ),
        (
            {"NEPTUNE_API_TOKEN": _token("https://app.neptune.ai"), "NEPTUNE_SERVER_URL": "https://app.neptune.ai"},
            "NEPTUNE_SERVER_URL=https://app.neptune.ai is Neptune's hosted service, which shut down on 2026-03-05. "
            "Use a self-hosted server, or tracking.mode=offline.",
        ),
        (
            {"NEPTUNE_API_TOKEN": "not-a-token", "NEPTUNE_SERVER_URL": "https://neptune.corp"},
            "the environment variable NEPTUNE_API_TOKEN <tracking.api_token_env=NEPTUNE_API_TOKEN> "
            "does not hold a Neptune API token (base64 JSON with an api_address).",
        ),
        (
            {"NEPTUNE_API_TOKEN": _token("https://other.corp"), "NEPTUNE_SERVER_URL": "https://neptune.corp/"},
            "the token in NEPTUNE_API_TOKEN was issued by https://other.corp, but "
            "NEPTUNE_SERVER_URL=https://neptune.corp/. Use a token from https://neptune.corp/, "
            "or point NEPTUNE_SERVER_URL at https://other.corp.",
        ),
    ],
    ids=["no-token", "no-url", "hosted", "garbled-token", "other-server"],
)
def test_neptune_async_without_a_usable_server_fails_before_connecting(tmp_path, monkeypatch, env, message):
    for name in ("NEPTUNE_API_TOKEN", "NEPTUNE_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracker = _neptune(tmp_path, mode="async")
    with pytest.raises(TargetUnavailable) as err:
        tracker.start_run("x", {})
    assert str(err.value) == message
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------- a run reopened by another tracker (level 0)
def test_mlflow_resume_run_logs_into_the_run_and_ends_it(mlflow_state):
    trainer = _mlflow(mlflow_state, "resume")
    run_id = trainer.start_run("train", {})
    trainer.log_metrics({"val_loss": 0.5}, step=1)
    trainer.leave_run()
    client = trainer.client
    assert client.get_run(run_id).info.status == "RUNNING"
    with pytest.raises(RuntimeError, match=r"call start_run\(\) first"):
        trainer.log_metrics({"x": 1.0})  # left: this tracker no longer writes to it

    later = _mlflow(mlflow_state, "resume")  # as `mlops run evaluate` would, in a process of its own
    later.resume_run(run_id)
    later.log_metrics({"test_acc": 0.9})
    later.log_dict({"key": "k"}, "lineage.json")
    later.end_run("FINISHED")
    run = client.get_run(run_id)
    assert (run.info.status, run.data.metrics) == ("FINISHED", {"val_loss": 0.5, "test_acc": 0.9})
    assert json.loads((mlflow_state.resolve() / "mlartifacts" / run_id / "artifacts" / "lineage.json").read_text()) \
        == {"key": "k"}
    assert len(client.search_runs([client.get_experiment_by_name("resume").experiment_id])) == 1
    with pytest.raises(LookupError, match="no MLflow run 0123456789abcdef"):
        _mlflow(mlflow_state, "resume").resume_run("0123456789abcdef")


def test_neptune_offline_resume_run_is_synced_as_the_same_run(tmp_path, monkeypatch):
    from neptune.cli.collect import collect_offline_containers

    monkeypatch.chdir(tmp_path)
    trainer = _neptune(tmp_path)
    run_id = trainer.start_run("churn-train", {"maturity": "0"})
    trainer.log_metrics({"val_loss": 0.5}, step=1)
    trainer.leave_run()

    later = _neptune(tmp_path)
    later.resume_run(run_id)
    assert later.run_id == run_id
    later.log_metrics({"test_acc": 0.9})
    later.log_dict({"key": "k"}, "lineage.json")
    later.end_run("FINISHED")

    # `neptune sync` groups the offline folders by run id: one run, both folders replayed into it.
    (container,) = collect_offline_containers(path=tmp_path / "state" / "neptune" / ".neptune")
    assert container.container_id == run_id and len(container.execution_dirs) == 2
    def ops(folder: Path) -> list[dict]:
        return [json.loads(line)["obj"] for log in sorted(folder.glob("data-*.log"))
                for line in log.read_text().splitlines()]

    by_folder = {d.path: ops(d.path) for d in container.execution_dirs}
    (second,) = [f for f, o in by_folder.items() if ["metrics", "test_acc"] in [op["path"] for op in o]]
    (first,) = set(by_folder) - {second}
    # The reopened part writes only its own keys: nothing replayed from it overwrites train's name or sys/failed.
    assert [op["path"] for op in by_folder[second]] == [["metrics", "test_acc"], ["artifacts", "lineage.json"]]
    assert {"type": "AssignString", "path": ["sys", "name"], "value": "churn-train"} in by_folder[first]
    assert ["metrics", "val_loss"] in [op["path"] for op in by_folder[first]]
    ops = by_folder[second]
    (upload,) = [op for op in ops if op["path"] == ["artifacts", "lineage.json"]]
    assert json.loads((second / "upload_path" / upload["tmp_file_name"]).read_text()) == {"key": "k"}
    assert not (tmp_path / ".neptune").exists()
    with pytest.raises(LookupError, match="no offline Neptune run 0000"):
        _neptune(tmp_path).resume_run("0000")
