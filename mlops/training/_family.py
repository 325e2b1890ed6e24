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

A family may also provide ``datamodule(module, split, batch_size, num_workers)`` (default: the tabular MLP's),
``checkpoint_extras(module)`` (a dict saved in the checkpoint under ``"mlops"``), ``lineage(module)`` (added
to the registered version's lineage as ``module``) and ``check(model, data, project)`` (read-only problems at
config load, as ``(key, message, hint)``).

A team's own LightningModule: ``model.flavor: lightning`` (mlops.training._lightning)
--------------------------------------------------------------------------------------
YAML::

    model:
      flavor: lightning                      # with `defaults: [{override /model: lightning}]` in the recipe
      module: models.churn:ChurnNet          # models/churn.py next to recipes/, or an installed package
      init_args: {hidden: 32}
      task: classification

The contract, when the framework's datamodule feeds it (no ``datamodule:``):

- **Input.** Batches are ``(x, y)``. ``x`` is float32 ``[B, F]``: the ``data.numeric`` columns standardised
  with the train split's mean and std (NaN → the mean), then each ``data.categorical`` column one-hot over
  ``[unknown, *sorted train vocabulary]``: the tabular MLP's preprocessing, fitted on the train split only.
- **Target.** ``y`` is int64 class indices into the sorted train classes (classification) or the float32
  target in its own units (regression).
- **Sizes.** If its constructor takes ``in_features`` and (classification) ``num_classes`` and ``init_args``
  does not set them, the framework passes ``F`` and the number of classes.
- **Output.** ``forward(x)`` returns ``[B, C]`` logits or probabilities (classification) or ``[B]`` / ``[B, 1]``
  predictions (regression). Served, logits become probabilities (softmax) and predictions ``[B, 1]``.
- **Example.** ``self.example_input_array`` is set (e.g. ``torch.zeros(2, in_features)``): the load-time check
  runs forward on it, and the ONNX export traces with it.
- **Metrics.** ``validation_step`` logs ``val_loss`` (or ``model.early_stopping.monitor``); ``test_step`` logs
  the metrics the gate compares (``test_acc`` and ``test_rmse`` are the default gate metrics).
- **Export.** The preprocessing is wrapped around the module in the exported graph, so served requests are the
  raw ``numeric``/``categorical`` rows the tabular MLP takes.

With ``datamodule: pkg.mod:Data`` it is built as ``Data(train=, val=, test=, batch_size=)`` from the split's raw
frames and feeds the module whatever it likes; the served model then takes the tensors its
``example_input_array`` names (``input``, or ``input_0..``, or the dict's keys), and classes are indices.
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
    return load_checkpoint(model_family(flavor), Path(checkpoint), map_location="cpu").eval()


def load_checkpoint(family: Any, checkpoint: Any, **kwargs: Any) -> Any:
    """``family.load_from_checkpoint(checkpoint, **kwargs)``, called on the class as it always is here.

    Lightning wraps ``LightningModule.load_from_checkpoint`` in a guard against calls on an instance that walks
    ``inspect.stack()`` on every call (a TorchScript workaround): with torch, Lightning and Prefect loaded that
    is 0.1-0.4 s a call, and a training run reloads a checkpoint three or four times (profiled in a flow run:
    1.6 s of a 7 s train step). The guard keeps the method as ``__func__``; a plain classmethod has one too.
    """
    method = family.load_from_checkpoint
    func = getattr(method, "__func__", None)
    return func(family, checkpoint, **kwargs) if func is not None else method(checkpoint, **kwargs)
