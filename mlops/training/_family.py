"""The model interface: what a model flavor's implementation provides to the Trainer, evaluation and export.

A model flavor's implementation is a LightningModule class that builds itself from the training split (its
preprocessing fitted there, and nowhere else) and reloads from the checkpoint the framework saves::

    class MyNet(pl.LightningModule):
        @classmethod
        def from_train(cls, model: ModelConfig, data: DataConfig, train: pd.DataFrame) -> MyNet:
            ...                                          # fit scalers/vocabularies on `train`, build layers
        # load_from_checkpoint(path, map_location=...) comes with Lightning (save_hyperparameters()).

YAML::

    model:
      flavor: tabular_mlp      # the flavor's config class (mlops.recipe.schema.ModelConfig subclass) validates
      task: classification     # the rest of this section
      hidden: [64, 32]

The framework's Trainer fits it (compute group, early stopping, checkpoints, tracking) and logs
`val_loss` and the task's validation metric; `evaluate` computes the test metrics the gate compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

    from mlops.recipe.schema import DataConfig, ModelConfig


class ModelFamily(Protocol):
    @classmethod
    def from_train(cls, model: ModelConfig, data: DataConfig, train: pd.DataFrame) -> Any: ...

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> Any: ...


def model_family(flavor: str) -> ModelFamily:
    """The LightningModule class of the model flavor `flavor` (mlops.flavors)."""
    from mlops.flavors import get

    return get("model", flavor).load()


def load_module(checkpoint: Path, flavor: str = "tabular_mlp") -> Any:
    """The module saved by :func:`mlops.training.fit`, on the CPU and in eval mode."""
    return model_family(flavor).load_from_checkpoint(Path(checkpoint), map_location="cpu").eval()
