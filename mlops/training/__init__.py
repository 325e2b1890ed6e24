"""Training: the seeded split, the tabular MLP with its preprocessing inside, fit, evaluate and reload.

    split = split_frame(frame, cfg.data, cfg.model.task)
    result = fit(cfg, split, out_dir)          # writes out_dir/model.ckpt and out_dir/history.json
    metrics = evaluate(cfg, result.module, split)
    module = load_module(result.checkpoint)    # in a later process, e.g. to export

Importing this package imports torch and Lightning.
"""

from mlops.training._fit import FitResult, evaluate, fit
from mlops.training._family import ModelFamily, load_module, model_family
from mlops.training._module import TabularDataModule, TabularMLP, predict_frame
from mlops.training._split import Split, split_frame, split_positions

__all__ = [
    "FitResult",
    "ModelFamily",
    "Split",
    "TabularDataModule",
    "TabularMLP",
    "evaluate",
    "fit",
    "load_module",
    "model_family",
    "predict_frame",
    "split_frame",
    "split_positions",
]
