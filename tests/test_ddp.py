"""Data-parallel training across processes on the CPU (gloo): the launcher's rules, its error path, and one live
`mlops up` with compute.strategy=ddp compute.devices=2 (the code path AWS Batch multi-node and EKS jobs run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from _training_cfg import breast_cancer

from mlops.errors import ConfigError, MlopsError, Problem
from mlops.recipe import load
from mlops.training import _ddp, evaluate, fit, split_frame

ROOT = Path(__file__).resolve().parents[1]
# Prefect and Triton http/grpc/metrics (the workers' rendezvous takes a free port on 127.0.0.1).
PORTS = tuple(int(p) for p in os.environ.get("MLOPS_DDP_PORTS", "4630,8630,8631,8632").split(","))
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")
DDP = ("compute.strategy=ddp", "compute.devices=2", "compute.accelerator=cpu")


def _compute(cfg, **update):
    return cfg.model_copy(update={"compute": cfg.compute.model_copy(update=update)})


# ---------------------------------------------------------------- the launcher's rules (no processes)
def test_more_than_one_process_is_launched_by_the_framework_unless_a_launcher_already_did():
    _, cfg = breast_cancer()
    two = _compute(cfg, strategy="ddp", devices=2).compute
    assert _ddp.world_size(two) == 2 and _ddp.launches(two, {})
    assert _ddp.launches(_compute(cfg, devices=2).compute, {})  # strategy auto picks ddp for 2 devices
    assert not _ddp.launches(two, {"LOCAL_RANK": "0"})  # torchrun, or one of our own workers
    assert not _ddp.launches(_compute(cfg, strategy="ddp", devices=1).compute, {})
    assert _ddp.world_size(_compute(cfg, strategy="ddp", devices=2, num_nodes=3).compute) == 6


def test_the_rendezvous_is_the_loopback_on_one_node_and_the_environment_on_several():
    _, cfg = breast_cancer()
    one = _compute(cfg, strategy="ddp", devices=2).compute
    # One node: the loopback, on a fresh port (not a MASTER_PORT an earlier Lightning fit left in os.environ).
    addr, port, node = _ddp.rendezvous(one, {"MASTER_PORT": "8633", "MASTER_ADDR": "10.0.0.9", "NODE_RANK": "1"})
    assert addr == "127.0.0.1" and port != 8633 and 0 < port < 65536 and node == 0
    multi = _compute(cfg, strategy="ddp", devices=2, num_nodes=2).compute
    batch = {"AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.0.5", "AWS_BATCH_JOB_NODE_INDEX": "1",
             "MASTER_PORT": "29500"}
    assert _ddp.rendezvous(multi, batch) == ("10.0.0.5", 29500, 1)
    with pytest.raises(ConfigError, match=r"`compute.num_nodes` is 2, but nothing here says where rank 0 listens"):
        _ddp.rendezvous(multi, {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_this_machine_lacks_are_a_config_error_before_training(tmp_path):
    frame, cfg = breast_cancer()
    cfg = _compute(cfg, accelerator="gpu", strategy="ddp", devices=2)
    with pytest.raises(ConfigError) as err:
        fit(cfg, split_frame(frame, cfg.data, cfg.model.task), tmp_path)
    assert err.value.exit_code == 2
    assert "`compute.accelerator` asks for 2 GPU(s) (compute.devices=2) but this machine has 0" in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("strategy", "message"), [
    ("fsdp", "strategy=fsdp shards the model over GPUs and cannot run on accelerator=cpu; on the CPU use "
             "strategy=ddp"),
    ("ddp_spawn", "strategy=ddp_spawn trains in children that keep the training history and best checkpoint to "
                  "themselves; use strategy=ddp"),
])
def test_strategies_that_cannot_work_here_are_refused_when_the_recipe_loads(tmp_path, strategy, message):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load(["recipe=breast_cancer", f"compute.strategy={strategy}", "compute.accelerator=cpu",
              "compute.devices=2"], tmp_path)
    assert err.value.exit_code == 2


def test_a_workers_own_error_comes_back_as_itself_and_anything_else_as_one_line(tmp_path):
    problem = Problem("model.early_stopping.monitor", "Net never logs 'val_x'", "", "log it")
    _ddp.write_error(tmp_path / "e0", ConfigError([problem]))
    back = _ddp.read_error(tmp_path / "e0")
    assert type(back) is ConfigError and back.exit_code == 2 and back.problems == [problem]
    assert str(back) == str(ConfigError([problem]))
    _ddp.write_error(tmp_path / "e1", RuntimeError("Connection closed by peer\n  at gloo/..."))
    assert _ddp.read_error(tmp_path / "e1") == "RuntimeError: Connection closed by peer"


# ---------------------------------------------------------------- a worker that dies (real processes)
def _workers(parent: int) -> dict[int, int]:
    """{rank: pid} of the DDP workers `parent` started."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if b"mlops.training._worker" not in (proc / "cmdline").read_bytes():
                continue
            env = dict(v.split("=", 1) for v in (proc / "environ").read_bytes().decode().split("\0") if "=" in v)
            found[int(env["RANK"])] = int(proc.name)
        except (OSError, IndexError, ValueError, KeyError):
            continue
    return found


def test_a_worker_killed_mid_fit_is_one_clear_error_and_the_next_fit_resumes(tmp_path):
    frame, cfg = breast_cancer()
    cfg = _compute(cfg, strategy="ddp", devices=2)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "max_epochs": 6, "early_stopping": cfg.model.early_stopping.model_copy(update={"enabled": False})})})
    split = split_frame(frame, cfg.data, cfg.model.task)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fit(cfg, split, tmp_path)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while not (tmp_path / "last.ckpt").is_file() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _workers(os.getpid())
    assert sorted(workers) == [0, 1], f"two workers train, one per rank: {failure}"
    os.kill(workers[1], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive() and len(failure) == 1
    err = failure[0]
    assert type(err) is MlopsError and err.exit_code == 1
    text = str(err)
    assert text.startswith("training worker rank 1 of 2 (compute.strategy=ddp compute.devices=2 compute.num_nodes=1) "
                           "was killed by SIGKILL; the other workers were stopped and no model is registered.")
    assert f"Its log: {_ddp.rank_log(tmp_path, 1)}." in text and "Running it again resumes from" in text
    assert "Traceback" not in text
    assert not _workers(os.getpid()) and not (tmp_path / "model.ckpt").exists()
    assert not any(_pid_alive(pid) for pid in workers.values())

    again = fit(cfg, split, tmp_path)
    assert again.resumed_after is not None and 1 <= again.resumed_after < 6
    assert again.epochs == 6 and [r["epoch"] for r in again.history] == list(range(6))
    record = json.loads((tmp_path / "compute.json").read_text())
    assert record["world_size"] == 2 and [r["rank"] for r in record["ranks"]] == [0, 1]
    assert not (tmp_path / "last.ckpt").exists() and not _ddp.workdir(tmp_path).exists()


def _pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ---------------------------------------------------------------- live: mlops up with 2 processes
def _mlops(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args, *PORT_OVERRIDES], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_up_with_two_ddp_processes_registers_one_version_close_to_one_process(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "recipes", project / "recipes")
    overrides = ("recipe=breast_cancer", *DDP, "model.max_epochs=4")
    try:
        started = time.monotonic()
        up = _mlops(project, "up", *overrides)
        up_s = time.monotonic() - started
        assert up.returncode == 0, up.stderr
        assert "breast_cancer version 1 is READY" in up.stderr
        versions = project / ".mlops" / "registry" / "breast_cancer" / "versions"
        assert sorted(p.name for p in versions.iterdir() if p.name.isdigit()) == ["1"]
        lineage = json.loads((versions / "1" / "lineage.json").read_text())
        compute = lineage["compute"]
        assert {k: compute[k] for k in ("accelerator", "strategy", "devices", "num_nodes", "world_size")} == {
            "accelerator": "cpu", "strategy": "ddp", "devices": 2, "num_nodes": 1, "world_size": 2}
        ranks = compute["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["pid"] != ranks[1]["pid"]
        # DistributedSampler: each rank trained on its half of the 397 training rows.
        assert [r["train_samples_last_epoch"] for r in ranks] == [199, 199]

        # The tracker heard each epoch once (from the launching process, not once per rank).
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{project / '.mlops' / 'mlflow.db'}")
        history = client.get_metric_history(lineage["tracking"]["run_id"], "val_loss")
        assert sorted(m.step for m in history) == list(range(lineage["epochs"]))

        # The same recipe in one process, in this process: the test metrics agree within a tolerance (two ranks
        # average their gradients over twice the batch, so they are close, not equal).
        cfg = load(list(overrides[:1]) + ["compute.accelerator=cpu", "compute.devices=1", "model.max_epochs=4"],
                   project)
        frame, _ = breast_cancer()
        split = split_frame(frame, cfg.data, cfg.model.task)
        started = time.monotonic()
        single = evaluate(cfg, fit(cfg, split, Path(tempfile.mkdtemp(dir=tmp_path))).module, split)
        single_s = time.monotonic() - started
        two = lineage["metrics"]
        print(f"\nddp 2 processes (whole up {up_s:.1f} s): {two}\none process (fit+evaluate {single_s:.1f} s): "
              f"{single}")
        assert abs(two["test_acc"] - single["test_acc"]) <= 0.05
        assert abs(two["test_auc"] - single["test_auc"]) <= 0.03
        assert abs(two["test_loss"] - single["test_loss"]) <= 0.15
    finally:
        _mlops(project, "down", "recipe=breast_cancer", timeout=300)


# ---------------------------------------------------------------- digits (images) through the steps, in-process
def test_digits_train_in_two_processes_through_the_steps(tmp_path, sources_path, monkeypatch):
    """The image classifier's own datamodule under DDP, through train/evaluate/register with the real tracker:
    the version's lineage says 2 ranks trained on halves of the split, and the model learned the digits."""
    from mlflow.tracking import MlflowClient

    from mlops import steps
    from mlops.stack import Stack

    monkeypatch.setenv("PYTHONPATH", sources_path)  # the workers see the image flavors' entry points
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load(["recipe=digits", *DDP, "model.max_epochs=3", f"target.state_dir={tmp_path / 'state'}",
                f"tracking.uri={uri}"], tmp_path)
    stack = Stack(cfg, tmp_path)
    snapshot = steps.ingest(stack)
    steps.validate(stack, snapshot)
    trained = steps.train(stack, snapshot)
    tested = steps.evaluate(stack, snapshot, trained)
    version = steps.register(stack, snapshot, trained, tested)
    lineage = stack.model_store.get(cfg.name, version.version).lineage
    compute = lineage["compute"]
    assert compute["world_size"] == 2 and [r["rank"] for r in compute["ranks"]] == [0, 1]
    train_rows = len(split_frame(pd.read_parquet(snapshot.path), cfg.data, cfg.model.task).train)
    assert [r["train_samples_last_epoch"] for r in compute["ranks"]] == [(train_rows + 1) // 2] * 2
    history = MlflowClient(tracking_uri=uri).get_metric_history(lineage["tracking"]["run_id"], "val_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    # One process reached 0.98 on these 3 epochs; two take half the optimizer steps per epoch (twice the batch).
    assert tested.values["test_acc"] >= 0.85, tested.values


def test_ddp_over_one_process_trains_here_and_leaves_no_process_group(tmp_path):
    frame, cfg = breast_cancer()
    cfg = _compute(cfg, strategy="ddp", devices=1)
    result = fit(cfg, split_frame(frame, cfg.data, cfg.model.task), tmp_path)
    assert not torch.distributed.is_initialized()
    assert json.loads((tmp_path / "compute.json").read_text())["world_size"] == 1 and result.epochs >= 1
