"""The baseline of bench/zero.py: breast_cancer with MLflow alone, train + log + register, in one process.

    python bench/_mlflow_zero.py <tracking dir>

The same data (scikit-learn's breast cancer, the recipe's split), the same Lightning model (the framework's
TabularMLP with the recipe's hyperparameters, early stopping on val_loss), trained by a Lightning Trainer
with MLflow's logger, then logged as an MLflow pyfunc model (the checkpoint + a predict that calls the same
module) and registered as `breast_cancer` version 1 in a sqlite-backed tracking store. bench/zero.py then
runs `mlflow models serve --env-manager local` on models:/breast_cancer/1 and times its first answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import lightning.pytorch as pl
import pandas as pd
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import MLFlowLogger
from sklearn.datasets import load_breast_cancer

from mlops.recipe.schema import DataConfig
from mlops.training._module import TabularDataModule, TabularMLP, fit_preprocessing
from mlops.training._split import split_frame

HIDDEN, LR, BATCH, EPOCHS, DROPOUT, PATIENCE = [64, 32], 0.002, 32, 40, 0.1, 5  # recipes/breast_cancer.yaml


class Model(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.module = TabularMLP.load_from_checkpoint(context.artifacts["checkpoint"], map_location="cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from mlops.training._module import predict_frame

        return predict_frame(self.module, model_input)


def main(root: Path) -> None:
    pl.seed_everything(0, workers=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    frame = load_breast_cancer(as_frame=True).frame
    features = [c for c in frame.columns if c != "target"]
    data = DataConfig(source="sklearn", target="target", numeric=features)  # the recipe's columns, default split
    split = split_frame(frame, data, "classification")
    train, test = split.train, split.test
    module = TabularMLP(task="classification", target="target", **fit_preprocessing("classification", data, train),
                        hidden=HIDDEN, dropout=DROPOUT, lr=LR, weight_decay=0.0)
    logger = MLFlowLogger(experiment_name="breast_cancer", tracking_uri=uri)
    trainer = pl.Trainer(max_epochs=EPOCHS, logger=logger, deterministic=True, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root,
                         callbacks=[EarlyStopping("val_loss", patience=PATIENCE)])
    dm = TabularDataModule(module, split, BATCH)
    trainer.fit(module, datamodule=dm)
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    with mlflow.start_run(run_id=logger.run_id):
        mlflow.log_metrics(metrics)
        mlflow.pyfunc.log_model(name="model", python_model=Model(), artifacts={"checkpoint": str(ckpt)},
                                input_example=test[features].head(2), registered_model_name="breast_cancer")
    print(f"epochs {trainer.current_epoch} metrics {metrics}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
