"""Recipes, frames and trained models shared by test_training.py and test_export.py.

Fits are cached for the session: training is the slow part, and several tests read the same model.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes

from mlops.recipe.schema import Config


def make_cfg(data: dict, model: dict, seed: int = 42) -> Config:
    return Config.model_validate(
        {
            "name": "t",
            "seed": seed,
            "data": data,
            "model": model,
            "compute": {"accelerator": "cpu", "devices": 1},
            "maturity": {"level": 0},
            "tracking": {"flavor": "mlflow", "experiment": "t"},
            "serving": {"model_name": "t"},
            "monitoring": {},
            "target": {"kind": "local"},
            "stack": {"name": "t", "description": "tests", "components": {}},
        }
    )


def synthetic_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Two numeric columns (one with NaNs) and a colour whose value matters, with a label the net can learn."""
    rng = np.random.default_rng(seed)
    a = rng.normal(10.0, 3.0, n)
    b = rng.normal(-2.0, 0.5, n)
    colour = rng.choice(["red", "green", "blue"], n)
    score = (a - 10.0) / 3.0 + np.where(colour == "red", 1.5, -0.5)
    b[rng.random(n) < 0.1] = np.nan
    label = np.where(score > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "colour": colour, "noise": rng.normal(size=n), "label": label})


def synthetic_cfg(**model: object) -> Config:
    data = {
        "source": "file",
        "path": "synthetic.csv",
        "target": "label",
        "numeric": ["a", "b"],
        "categorical": ["colour"],
    }
    return make_cfg(data, {"task": "classification", "hidden": [16], "batch_size": 32, "max_epochs": 5, **model})


def breast_cancer() -> tuple[pd.DataFrame, Config]:
    frame = load_breast_cancer(as_frame=True).frame
    data = {
        "source": "sklearn",
        "dataset": "breast_cancer",
        "target": "target",
        "numeric": [c for c in frame.columns if c != "target"],
    }
    model = {"task": "classification", "hidden": [64, 32], "lr": 1e-3, "batch_size": 32, "max_epochs": 10}
    return frame, make_cfg(data, model)


def diabetes() -> tuple[pd.DataFrame, Config]:
    frame = load_diabetes(as_frame=True, scaled=False).frame
    data = {
        "source": "sklearn",
        "dataset": "diabetes",
        "target": "target",
        "numeric": [c for c in frame.columns if c not in ("target", "sex")],
        "categorical": ["sex"],
    }
    model = {
        "task": "regression",
        "hidden": [32],
        "lr": 3e-3,
        "batch_size": 32,
        "max_epochs": 10,
        "early_stopping": {"monitor": "val_rmse"},
    }
    return frame, make_cfg(data, model)


@functools.cache
def fitted(name: str):  # noqa: ANN201 (Config, Split, FitResult)
    from mlops.training import fit, split_frame

    if name == "synthetic":
        frame, cfg = synthetic_frame(), synthetic_cfg()
    else:
        frame, cfg = {"breast_cancer": breast_cancer, "diabetes": diabetes}[name]()
    split = split_frame(frame, cfg.data, cfg.model.task)
    return cfg, split, fit(cfg, split, Path(tempfile.mkdtemp(prefix=f"mlops-{name}-")))
