"""`model.flavor: lightning`: a team's own LightningModule through the same loop as the built-in MLP.

In process: the load-time checks (file:line, every one), a module in the project folder trained, evaluated,
exported and answered by onnxruntime on raw rows, a module fed by its own datamodule exported with a tensor
signature. End to end: examples/custom_model installed with pip and run with `mlops up` on Prefect and Triton.

Until the shared venv is reinstalled from this pyproject, the `lightning` entry point is not in the installed
metadata; the tests then register it the way the package will (the registry in process, a dist-info with the
entry point on PYTHONPATH for the CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from mlops import flavors
from mlops._process import port_free
from mlops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_model"
PORTS = (4800, 8800, 8801, 8802)
PORT_OVERRIDES = (f"target.prefect.port={PORTS[0]}", f"serving.http_port={PORTS[1]}", f"serving.grpc_port={PORTS[2]}",
                  f"serving.metrics_port={PORTS[3]}")
INSTALLED = "lightning" in flavors.registered()["model"]

MODELS = '''\
import lightning.pytorch as pl
import torch
from torch import nn


class ChurnNet(pl.LightningModule):
    def __init__(self, in_features, num_classes, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.example_input_array = torch.zeros(2, in_features)

    def forward(self, x):
        return self.net(x)

    def _step(self, batch, stage):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True,
                 batch_size=len(y))
        return loss

    def training_step(self, batch, i):
        return self._step(batch, "train")

    def validation_step(self, batch, i):
        self._step(batch, "val")

    def test_step(self, batch, i):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class NotAModule:
    pass


class NoExample(ChurnNet):
    def __init__(self, in_features, num_classes):
        super().__init__(in_features, num_classes)
        self.example_input_array = None


class OneColumn(ChurnNet):
    def __init__(self, in_features, num_classes):
        super().__init__(in_features, 1)


class NumericOnly(ChurnNet):
    """Fed by its own datamodule: the 4 numeric columns, scaled by hand."""

    def __init__(self, width=4):
        super().__init__(width, 2)


class NumericData(pl.LightningDataModule):
    COLS = ["tenure_months", "monthly_charges", "support_calls", "data_gb"]

    def __init__(self, train, val, test, batch_size):
        super().__init__()
        self.frames, self.batch_size = {"train": train, "val": val, "test": test}, batch_size

    def _loader(self, name):
        f = self.frames[name]
        x = torch.tensor(f[self.COLS].fillna(0).to_numpy(dtype="float32") / 100.0)
        y = torch.tensor((f["churned"] == "yes").to_numpy().astype("int64"))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=self.batch_size,
                                           shuffle=name == "train")

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
'''

RECIPE = """\
# @package _global_
defaults:
  - override /model: lightning
name: {name}
data:
  source: file
  path: recipes/data/churn.csv
  target: churned
  numeric: [tenure_months, monthly_charges, support_calls, data_gb]
  categorical: [contract, payment_method, region]
model:
  module: {module}
  init_args: {init_args}
  max_epochs: 4
"""
MODULE_LINE = 12  # the line of `module:` in RECIPE


@pytest.fixture
def lightning_flavor(monkeypatch):
    """The built-in `lightning` flavor in the registry, whether or not the installed metadata has it yet."""
    from mlops.recipe import builtin, schema

    with monkeypatch.context() as m:
        m.setitem(flavors.registered()["model"], "lightning", builtin.LIGHTNING)
        schema.config_class.cache_clear()
        try:
            yield
        finally:
            schema.config_class.cache_clear()
    schema.config_class.cache_clear()


def _project(root: Path, package: str) -> Path:
    (root / "recipes" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "data" / "churn.csv", root / "recipes" / "data" / "churn.csv")
    (root / package).mkdir()
    (root / package / "churn.py").write_text(MODELS)
    return root


def _recipe(project: Path, name: str, module: str, init_args: str = "{}") -> None:
    (project / "recipes" / f"{name}.yaml").write_text(RECIPE.format(name=name, module=module, init_args=init_args))


# ---------------------------------------------------------------- load-time checks
@pytest.mark.parametrize(("module", "init_args", "message"), [
    ("errs_a.nope:ChurnNet", "{}", "`model.module` 'errs_a.nope:ChurnNet' does not import: ModuleNotFoundError: "
     "No module named 'errs_a.nope'"),
    ("errs_a.churn:NotAModule", "{}", "`model.module` 'errs_a.churn:NotAModule' is a class deriving from object, "
     "not a LightningModule subclass"),
    ("errs_a.churn:ChurnNet", "{hiden: 8}", "`model.init_args` errs_a.churn:ChurnNet does not take hiden; its "
     "constructor takes: in_features, num_classes, hidden"),
    ("errs_a.churn:NoExample", "{}", "`model.module` errs_a.churn:NoExample has no example_input_array"),
    ("errs_a.churn:OneColumn", "{}", "`model.module` errs_a.churn:OneColumn's forward on its example_input_array "
     "returns shape [2, 1]; task=classification needs [N, C] probabilities or logits over C >= 2 classes"),
])
def test_a_module_that_does_not_fit_is_refused_at_load_with_file_and_line(tmp_path, lightning_flavor, module,
                                                                         init_args, message):
    from mlops.recipe import load

    project = _project(tmp_path, "errs_a")
    _recipe(project, "bad", module, init_args)
    with pytest.raises(ConfigError) as err:
        load(["recipe=bad"], project)
    line = MODULE_LINE + 1 if message.startswith("`model.init_args`") else MODULE_LINE
    assert f"recipes/bad.yaml:{line}: {message}" in str(err.value)


def _site_with_lightning(site: Path) -> Path:
    """PYTHONPATH for the CLI: the entry point of `lightning` when the installed mlops lacks it, then this tree."""
    if not INSTALLED:
        info = site / "mlops_lightning_dev-1.0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlops-lightning-dev\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[mlops.flavors]\nmodel-lightning = mlops.recipe.builtin:LIGHTNING\n")
    return site


def mlops(project: Path, *args: str, pythonpath: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_cli_refuses_a_module_that_does_not_import_with_exit_2_and_no_traceback(tmp_path):
    project = _project(tmp_path / "p", "errs_b")
    _recipe(project, "bad", "errs_b.churn:Missing")
    proc = mlops(project, "plan", "recipe=bad", pythonpath=_site_with_lightning(tmp_path / "site"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (f"recipes/bad.yaml:{MODULE_LINE}: `model.module` 'errs_b.churn:Missing' does not import: "
            "AttributeError: module 'errs_b.churn' has no attribute 'Missing'") in " ".join(proc.stderr.split())
    assert not (project / ".mlops" / "pids").exists() or not any((project / ".mlops" / "pids").iterdir())


# ---------------------------------------------------------------- train, evaluate, export in process
def test_a_module_in_the_project_folder_trains_and_its_export_answers_raw_rows(tmp_path, lightning_flavor):
    import torch

    from mlops.recipe import load
    from mlops.serving._export import export_onnx, signature_to_frame_inputs
    from mlops.training import evaluate, fit, load_module, split_frame

    project = _project(tmp_path, "models")
    _recipe(project, "own", "models.churn:ChurnNet", "{hidden: 8}")
    cfg = load(["recipe=own", "compute.accelerator=cpu"], project)
    split = split_frame(pd.read_csv(project / "recipes" / "data" / "churn.csv"), cfg.data, cfg.model.task)
    result = fit(cfg, split, tmp_path / "train", project=project)
    assert type(result.module).__name__ == "ChurnNet" and "val_loss" in result.val_metrics
    metrics = evaluate(cfg, result.module, split)
    assert set(metrics) == {"test_loss", "test_acc"} and 0.5 < metrics["test_acc"] <= 1.0

    lineage = json.loads((tmp_path / "train" / "module.json").read_text())
    source = project / "models" / "churn.py"
    assert lineage["module"] == "models.churn:ChurnNet"
    assert lineage["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert lineage["init_args"] == {"hidden": 8, "in_features": 4 + sum(
        split.train[c].nunique() + 1 for c in cfg.data.categorical), "num_classes": 2}

    module = load_module(result.checkpoint, "lightning")
    signature = export_onnx(module, tmp_path / "model.onnx")
    assert signature.to_dict()["inputs"] == [
        {"name": "numeric", "datatype": "FP32", "columns": list(cfg.data.numeric)},
        {"name": "categorical", "datatype": "BYTES", "columns": list(cfg.data.categorical)}]
    assert signature.to_dict()["outputs"] == [{"name": "probabilities", "datatype": "FP32", "dims": [2]}]
    assert signature.classes == ["no", "yes"]

    # Raw rows, an unseen category and a missing number included: the graph preprocesses as training did.
    rows = split.test.drop(columns=["churned"]).copy()
    rows.iloc[0, rows.columns.get_loc("region")] = "mars"
    rows.iloc[1, rows.columns.get_loc("tenure_months")] = np.nan
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probabilities"], signature_to_frame_inputs(signature, rows))
    with torch.no_grad():
        want = torch.softmax(module(module._mlops_features.matrix(rows)), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert got.shape == (len(rows), 2)


def test_a_module_with_its_own_datamodule_serves_a_tensor_signature(tmp_path, lightning_flavor):
    from mlops.errors import PredictError
    from mlops.recipe import load
    from mlops.serving._client import tensor_inputs
    from mlops.serving._export import export_onnx
    from mlops.serving._repository import stock_config
    from mlops.training import fit, load_module, split_frame

    project = _project(tmp_path, "dm_models")
    _recipe(project, "dm", "dm_models.churn:NumericOnly")
    text = (project / "recipes" / "dm.yaml").read_text().replace(
        "  max_epochs: 4", "  max_epochs: 2\n  datamodule: dm_models.churn:NumericData")
    (project / "recipes" / "dm.yaml").write_text(text)
    cfg = load(["recipe=dm", "compute.accelerator=cpu"], project)
    split = split_frame(pd.read_csv(project / "recipes" / "data" / "churn.csv"), cfg.data, cfg.model.task)
    result = fit(cfg, split, tmp_path / "train", project=project)
    signature = export_onnx(load_module(result.checkpoint, "lightning"), tmp_path / "model.onnx").to_dict()
    assert signature["inputs"] == [{"name": "input", "datatype": "FP32", "dims": [4]}]
    assert signature["outputs"] == [{"name": "probabilities", "datatype": "FP32", "dims": [2]}]
    assert signature["classes"] == [0, 1]
    assert "dims: 4" in stock_config("dm", signature, cfg.serving)

    x = np.random.default_rng(0).random((5, 4))
    feed = tensor_inputs(signature, x)
    assert feed["input"].dtype == np.float32
    (got,) = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, feed)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(PredictError, match=r"input 'input' has shape \[5, 3\], expected \[batch, 4\]"):
        tensor_inputs(signature, x[:, :3])


def test_a_gate_on_a_metric_the_module_never_logs_is_a_config_error():
    from mlops.artifacts import TestMetrics
    from mlops.plan import Gate
    from mlops.steps._steps import _gate_metrics_logged

    gate = Gate(name="gate", after="evaluate", metric="test_auc", direction="maximize", min_improvement=0.0,
                floors={"test_acc": 0.5}, on_pass="deploy", on_fail="stop")
    with pytest.raises(ConfigError) as err:
        _gate_metrics_logged(gate, TestMetrics(values={"test_acc": 0.9, "test_loss": 0.3}))
    assert str(err.value).count("never logs") == 1
    assert "`maturity.gate.metric` the gate compares 'test_auc', which the model's test_step never logs; it " \
           "logs: test_acc, test_loss" in str(err.value)
    _gate_metrics_logged(gate.model_copy(update={"metric": "test_acc"}), TestMetrics(values={"test_acc": 0.9}))


# ---------------------------------------------------------------- the example package, end to end
@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build") / "custom_model"
    shutil.copytree(EXAMPLE, build)  # pip builds in place: keep the source tree clean
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(build)], check=True, capture_output=True, text=True)
    return _site_with_lightning(site)


@pytest.mark.e2e
def test_the_example_package_is_a_flavor_that_goes_up_and_answers(tmp_path, example_site):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use"
    project = tmp_path / "project"
    (project / "recipes" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "data" / "churn.csv", project / "recipes" / "data" / "churn.csv")
    shutil.copy(EXAMPLE / "recipes" / "churn_net.yaml", project / "recipes" / "churn_net.yaml")
    try:
        proc = mlops(project, "up", "recipe=churn_net", "compute.accelerator=cpu", *PORT_OVERRIDES,
                     pythonpath=example_site)
        assert proc.returncode == 0, proc.stderr
        assert "churn_net version 1 is READY" in proc.stderr
        (lineage_file,) = project.glob(".mlops/registry/churn_net/versions/1/lineage.json")
        lineage = json.loads(lineage_file.read_text())
        source = example_site / "churn_example" / "model.py"
        assert lineage["module"]["module"] == "churn_example.model:ChurnNet"
        assert lineage["module"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert lineage["components"]["model"] == "churn_net"
        assert 0.5 < lineage["metrics"]["test_acc"] <= 1.0 and "val_loss" in lineage["metrics"]

        rows = project / "rows.json"
        pd.read_csv(project / "recipes" / "data" / "churn.csv").head(3).drop(columns=["churned", "customer_id"]) \
            .to_json(rows, orient="records")
        pred = mlops(project, "predict", "recipe=churn_net", "--input", str(rows), "--json", *PORT_OVERRIDES,
                     pythonpath=example_site)
        assert pred.returncode == 0, pred.stderr
        answer = json.loads(pred.stdout)
        assert answer["classes"] == ["no", "yes"] and len(answer["labels"]) == 3
        assert np.allclose(np.sum(answer["probabilities"], axis=1), 1.0, atol=1e-5)
    finally:
        mlops(project, "down", "recipe=churn_net", *PORT_OVERRIDES, pythonpath=example_site, timeout=300)


def test_the_example_readme_names_what_the_package_ships():
    text = (EXAMPLE / "README.md").read_text()
    for f in ("churn_example/model.py", "churn_example/flavor.py", "recipes/churn_net.yaml", "pyproject.toml"):
        assert f in text and (EXAMPLE / f).is_file()
    assert textwrap.dedent((EXAMPLE / "pyproject.toml").read_text()).count('churn_net = "churn_example.flavor:FLAVOR"')


@pytest.mark.e2e
def test_a_module_in_the_project_folder_goes_up_and_answers(tmp_path):
    busy = [p for p in PORTS if not port_free("127.0.0.1", p)]
    assert not busy, f"ports {busy} are in use"
    site = _site_with_lightning(tmp_path / "site")
    project = _project(tmp_path / "project", "models")
    _recipe(project, "own", "models.churn:ChurnNet", "{hidden: 8}")
    try:
        proc = mlops(project, "up", "recipe=own", "compute.accelerator=cpu", *PORT_OVERRIDES, pythonpath=site)
        assert proc.returncode == 0, proc.stderr
        assert "own version 1 is READY" in proc.stderr
        lineage = json.loads((project / ".mlops" / "registry" / "own" / "versions" / "1" / "lineage.json").read_text())
        assert lineage["module"]["module"] == "models.churn:ChurnNet"
        assert lineage["module"]["source_sha256"] == hashlib.sha256(
            (project / "models" / "churn.py").read_bytes()).hexdigest()
        rows = project / "rows.csv"
        pd.read_csv(project / "recipes" / "data" / "churn.csv").head(4).drop(columns=["churned"]).to_csv(rows,
                                                                                                      index=False)
        pred = mlops(project, "predict", "recipe=own", "--input", str(rows), "--json", *PORT_OVERRIDES,
                     pythonpath=site)
        assert pred.returncode == 0, pred.stderr
        assert len(json.loads(pred.stdout)["labels"]) == 4
    finally:
        mlops(project, "down", "recipe=own", *PORT_OVERRIDES, pythonpath=site, timeout=300)
