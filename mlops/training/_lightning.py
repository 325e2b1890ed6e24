"""The `lightning` model flavor: a team's own LightningModule, imported, checked, trained, exported and served.

The module is named by import path (``model.module: acme_models.churn:ChurnNet``); the project folder is put
on ``sys.path`` first, so ``models/churn.py`` next to ``recipes/`` imports as ``models.churn``. What the module
is fed, and what it must provide, is the contract in :mod:`mlops.training._family`.

The trained module is the team's own class. What the framework adds (the preprocessing fitted on the train
split, the import path, the constructor's arguments, the source file's sha256) travels in the checkpoint under
the ``"mlops"`` key, so :meth:`LightningFamily.load_from_checkpoint` rebuilds the module, and its preprocessing,
from the checkpoint alone, in any process.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mlops.errors import ConfigError, Problem
from mlops.features import categorical_strings, numeric_array
from mlops.recipe.schema import DataConfig, ModelConfig
from mlops.training._family import load_checkpoint
from mlops.training._module import SplitDataModule, category_codes, class_indices, fit_preprocessing
from mlops.training._split import Split

CHECKPOINT_KEY = "mlops"
# Constructor arguments the framework fills in when the constructor takes them and init_args does not set them.
IN_FEATURES, NUM_CLASSES = "in_features", "num_classes"


# ---------------------------------------------------------------- importing
_projects: list[str] = []  # the project folders this process made importable, the latest last


def importable(project: Path | str | None) -> None:
    """Put the project folder on ``sys.path`` (first, once), so its own modules import by dotted name."""
    if project is None:
        return
    folder = str(Path(project).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if folder not in _projects:
        _projects.append(folder)


def import_object(spec: str, project: Path | str | None = None) -> Any:
    """``package.module:Attr`` imported from the project folder or an installed package. Without `project`,
    the folder a caller made importable, else $MLOPS_PROJECT_DIR or the current folder (as the CLI finds it)."""
    if project is None and not _projects:
        from mlops.recipe import project_dir

        project = project_dir()
    importable(project)
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def source_of(cls: type) -> dict[str, str]:
    """The module's import path, its source file and that file's sha256: what the lineage records."""
    path = inspect.getsourcefile(cls) or ""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else ""
    return {"module": f"{cls.__module__}:{cls.__qualname__}", "source_file": path, "source_sha256": digest}


# ---------------------------------------------------------------- the framework's preprocessing
class TabularFeatures(nn.Module):
    """The preprocessing the tabular MLP has, as a module of its own: ``forward(numeric, codes)`` takes raw
    numeric values (NaN allowed) and category codes (0 = unknown) and returns the float32 feature matrix
    ``[N, F]``: standardised numeric columns (NaN → the train mean), then each categorical column one-hot over
    ``[unknown, *vocabulary]``. Its buffers go into the exported graph, so served rows are raw rows."""

    def __init__(self, stats: dict[str, Any]):
        super().__init__()
        self.stats = stats
        n = len(stats["numeric"])
        self.register_buffer("num_mean", torch.tensor(stats["num_mean"], dtype=torch.float32).reshape(n))
        self.register_buffer("num_std", torch.tensor(stats["num_std"], dtype=torch.float32).reshape(n))
        for j, vocab in enumerate(stats["categories"]):
            self.register_buffer(f"onehot_{j}", torch.arange(len(vocab) + 1).reshape(1, -1))
        self._lookup = [{v: i + 1 for i, v in enumerate(vocab)} for vocab in stats["categories"]]

    @property
    def width(self) -> int:
        return len(self.stats["numeric"]) + sum(len(v) + 1 for v in self.stats["categories"])

    def encode(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw rows as ``(numeric float32 [N, n_num], codes int64 [N, n_cat])``: the exported graph's inputs."""
        numeric = torch.from_numpy(numeric_array(frame, self.stats["numeric"]))
        return numeric, torch.from_numpy(category_codes(categorical_strings(frame, self.stats["categorical"]),
                                                        self._lookup))

    def targets(self, frame: pd.DataFrame, target: str, classification: bool) -> torch.Tensor:
        y = frame[target]
        if not classification:
            return torch.tensor(y.to_numpy(dtype=np.float32))
        return class_indices(y, self.stats["classes"], target)

    def forward(self, numeric: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.stats["numeric"]:
            x = torch.where(torch.isnan(numeric), self.num_mean, numeric)
            parts.append((x - self.num_mean) / self.num_std)
        for j in range(len(self.stats["categorical"])):
            parts.append((codes[:, j : j + 1] == getattr(self, f"onehot_{j}")).to(torch.float32))
        return torch.cat(parts, dim=1)

    def matrix(self, frame: pd.DataFrame) -> torch.Tensor:
        with torch.no_grad():
            return self(*self.encode(frame))


class FeatureDataModule(SplitDataModule):
    """The framework's datamodule for a team's module: batches ``(x float32 [B, F], y)`` of the three splits."""

    def __init__(self, features: TabularFeatures, target: str, classification: bool, split: Split,
                 batch_size: int, num_workers: int = 0):
        super().__init__(split, batch_size, num_workers)
        self.features, self.target, self.classification = features, target, classification

    def _dataset(self, frame: pd.DataFrame) -> TensorDataset:
        return TensorDataset(self.features.matrix(frame), self.features.targets(frame, self.target,
                                                                                self.classification))


# ---------------------------------------------------------------- checks
def _constructor_args(cls: type, init_args: dict[str, Any], in_features: int | None, num_classes: int | None
                      ) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the arguments to build it with, init_args it does not take, required arguments nobody gives)."""
    params = inspect.signature(cls.__init__).parameters
    named = {n: p for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(k for k in init_args if k not in named)
    args = dict(init_args)
    for name, value in ((IN_FEATURES, in_features), (NUM_CLASSES, num_classes)):
        if value is not None and name in named and name not in args:
            args[name] = value
    missing = [n for n, p in named.items() if p.default is p.empty and n not in args]
    return args, unknown, missing


def _call(module: nn.Module, example: Any) -> Any:
    if isinstance(example, dict):
        return module(**example)
    if isinstance(example, (tuple, list)):
        return module(*example)
    return module(example)


def output_problem(out: Any, task: str, classes: int | None = None) -> str | None:
    """What is wrong with a forward's output for the task, or None."""
    if not isinstance(out, torch.Tensor):
        return f"returns a {type(out).__name__}, not a tensor"
    shape = list(out.shape)
    if task == "classification":
        if out.ndim != 2 or shape[1] < 2:
            return (f"returns shape {shape}; task=classification needs [N, C] probabilities or logits over C >= 2 "
                    "classes")
        if classes is not None and shape[1] != classes:
            return f"returns {shape[1]} columns, but the training split has {classes} classes"
    elif not (out.ndim == 1 or (out.ndim == 2 and shape[1] == 1)):
        return f"returns shape {shape}; task=regression needs [N] or [N, 1] predictions"
    return None


class LightningFamily:
    """The implementation of the `lightning` model flavor (and of flavors whose config subclasses its config):
    the model interface of :mod:`mlops.training._family`, over the class ``model.module`` names."""

    @classmethod
    def check(cls, model: ModelConfig, data: DataConfig, project: Path) -> list[tuple[str, str, str]]:
        """Read-only checks at config load: (dotted key, message, hint) per problem. Imports the module, checks
        it is a LightningModule taking ``init_args``, builds it and runs one forward on its
        ``example_input_array``. Without data yet, ``in_features`` is a stand-in (one column per numeric, two per
        categorical) and ``num_classes`` is 2; training checks the real widths."""
        spec: str = model.module  # type: ignore[attr-defined]
        try:
            user = import_object(spec, project)
        except Exception as exc:  # an import error of the team's code is a config problem to show
            return [("model.module", f"{spec!r} does not import: {_first_line(exc)}",
                     "the module must be importable from the project folder (models/churn.py is `models.churn`) "
                     "or an installed package")]
        if not (isinstance(user, type) and issubclass(user, pl.LightningModule)):
            kind = f"class deriving from {', '.join(b.__name__ for b in user.__mro__[1:-1]) or 'object'}" \
                if isinstance(user, type) else f"{type(user).__name__}"
            return [("model.module", f"{spec!r} is a {kind}, not a LightningModule subclass",
                     "derive it from lightning.pytorch.LightningModule")]
        problems = []
        datamodule = getattr(model, "datamodule", None)
        if datamodule:
            try:
                dm = import_object(datamodule, project)
            except Exception as exc:
                problems.append(("model.datamodule", f"{datamodule!r} does not import: {_first_line(exc)}",
                                 "or leave `datamodule` unset: the framework's feeds preprocessed features"))
            else:
                if not (isinstance(dm, type) and issubclass(dm, pl.LightningDataModule)):
                    problems.append(("model.datamodule", f"{datamodule!r} is not a LightningDataModule subclass",
                                     "derive it from lightning.pytorch.LightningDataModule"))
        stand_in = None if datamodule else len(data.numeric) + 2 * len(data.categorical)
        num_classes = 2 if model.task == "classification" and not datamodule else None
        args, unknown, missing = _constructor_args(user, model.init_args, stand_in, num_classes)  # type: ignore[attr-defined]
        takes = [n for n in inspect.signature(user.__init__).parameters if n != "self"]
        if unknown:
            problems.append(("model.init_args", f"{spec} does not take {', '.join(unknown)}; its constructor takes: "
                             f"{', '.join(takes) or 'nothing'}", "remove or rename those keys"))
        if missing:
            problems.append(("model.init_args", f"{spec} needs {', '.join(missing)}, which init_args does not set",
                             f"add them to model.init_args (the framework fills in `{IN_FEATURES}` and "
                             f"`{NUM_CLASSES}` only when it feeds the module)"))
        if problems:
            return problems
        try:
            module = user(**args)
        except Exception as exc:
            return [("model.init_args", f"{spec}(**init_args) raised {_first_line(exc)}",
                     "check the values in model.init_args")]
        example = module.example_input_array
        if example is None:
            return [("model.module", f"{spec} has no example_input_array",
                     f"set it in __init__, e.g. self.example_input_array = torch.zeros(2, {IN_FEATURES}): export "
                     "to ONNX traces the module with it")]
        try:
            with torch.no_grad():
                out = _call(module.eval(), example)
        except Exception as exc:
            return [("model.module", f"{spec}'s forward fails on its example_input_array: {_first_line(exc)}",
                     "the example must be a batch the module takes")]
        if (problem := output_problem(out, model.task)) is not None:
            return [("model.module", f"{spec}'s forward on its example_input_array {problem}",
                     "make forward fit the task, or set model.task to the one it fits")]
        return []

    @classmethod
    def from_train(cls, model: ModelConfig, data: DataConfig, train: pd.DataFrame) -> pl.LightningModule:
        """The team's module, untrained, with the framework's preprocessing fitted on ``train`` (unless the
        recipe names its own datamodule) and its checkpoint metadata attached."""
        spec: str = model.module  # type: ignore[attr-defined]
        datamodule: str | None = getattr(model, "datamodule", None)
        user = import_object(spec)
        meta: dict[str, Any] = {"module": spec, "datamodule": datamodule, "task": model.task, "target": data.target,
                                "project": _projects[-1] if _projects else "", **source_of(user)}
        features = None
        if datamodule:
            args, _, _ = _constructor_args(user, model.init_args, None, None)  # type: ignore[attr-defined]
            meta["preprocessing"], meta["classes"] = None, None
        else:
            stats = fit_preprocessing(model.task, data, train)
            features = TabularFeatures(stats)
            classes = stats["classes"] if model.task == "classification" else None
            args, _, _ = _constructor_args(user, model.init_args, features.width,  # type: ignore[attr-defined]
                                           len(classes) if classes else None)
            meta["preprocessing"], meta["classes"] = stats, classes
        meta["init_args"] = args
        module = user(**args)
        if features is not None:
            with torch.no_grad():
                out = module.eval()(features.matrix(train.head(2)))
            module.train()
            classes = meta["classes"]
            if (problem := output_problem(out, model.task, len(classes) if classes else None)) is not None:
                raise ConfigError([Problem("model.module", f"{spec}'s forward on the preprocessed features "
                                           f"({features.width} columns) {problem}", "",
                                           f"size the output layer from the `{NUM_CLASSES}` argument the framework "
                                           "passes")])
        return _attach(module, meta, features)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> pl.LightningModule:
        """The module a checkpoint written by :func:`mlops.training.fit` holds, with its preprocessing."""
        meta = torch.load(checkpoint_path, map_location="cpu", weights_only=False).get(CHECKPOINT_KEY)
        if meta is None:
            raise ConfigError([Problem("model.flavor", f"the checkpoint {checkpoint_path} has no {CHECKPOINT_KEY!r} "
                                       "metadata: it was not trained by the `lightning` flavor", "",
                                       "train it again with `mlops up`")])
        user = import_object(meta["module"], meta.get("project") or None)
        module = load_checkpoint(user, checkpoint_path, map_location=map_location, **meta["init_args"], **kwargs)
        stats = meta.get("preprocessing")
        return _attach(module, meta, TabularFeatures(stats) if stats else None)

    @classmethod
    def datamodule(cls, module: pl.LightningModule, split: Split, batch_size: int, num_workers: int = 0
                   ) -> pl.LightningDataModule:
        meta = module._mlops
        if meta["datamodule"]:
            return import_object(meta["datamodule"])(train=split.train, val=split.val, test=split.test,
                                                     batch_size=batch_size)
        return FeatureDataModule(module._mlops_features, meta["target"], meta["task"] == "classification", split,
                                 batch_size, num_workers)

    @classmethod
    def checkpoint_extras(cls, module: pl.LightningModule) -> dict[str, Any]:
        """What the checkpoint carries besides the weights (under ``"mlops"``)."""
        return dict(module._mlops)

    @classmethod
    def lineage(cls, module: pl.LightningModule) -> dict[str, Any]:
        """The module's import path and source hash, for the registered version's lineage."""
        meta = module._mlops
        return {k: meta[k] for k in ("module", "source_file", "source_sha256", "init_args", "datamodule")}


def _attach(module: pl.LightningModule, meta: dict[str, Any], features: TabularFeatures | None
            ) -> pl.LightningModule:
    module._mlops = meta
    # object.__setattr__: as a submodule its buffers would join the team's state_dict, and the class's own
    # load_from_checkpoint would then refuse the checkpoint's unexpected keys.
    object.__setattr__(module, "_mlops_features", features)
    return module


def is_lightning_flavor(module: Any) -> bool:
    return isinstance(getattr(module, "_mlops", None), dict)


# ---------------------------------------------------------------- export
class ServedModule(pl.LightningModule):
    """What the exported graph computes: raw inputs → (the framework's preprocessing) → the team's module →
    probabilities ``[N, C]`` (softmax over its logits, unless it already returns probabilities) or predictions
    ``[N, 1]``. A LightningModule, so the export is Lightning's ``to_onnx`` over its ``example_input_array``."""

    def __init__(self, module: pl.LightningModule):
        super().__init__()
        meta = module._mlops
        self.net = copy.deepcopy(module).float().eval()  # FP32 whatever precision trained it; the caller's stays
        features = module._mlops_features
        self.features = copy.deepcopy(features) if features is not None else None
        self.classification = meta["task"] == "classification"
        if self.features is not None:
            stats = self.features.stats
            self.input_names = [n for n, cols in (("numeric", stats["numeric"]), ("codes", stats["categorical"]))
                                if cols]
            shapes = {"numeric": (torch.float32, len(stats["numeric"])), "codes": (torch.int64,
                                                                                   len(stats["categorical"]))}
            self.example_input_array = tuple(torch.zeros(2, shapes[n][1], dtype=shapes[n][0])
                                             for n in self.input_names)
        else:
            example = module.example_input_array
            if isinstance(example, dict):
                self.input_names, self.example_input_array = list(example), tuple(example.values())
            elif isinstance(example, (tuple, list)):
                self.input_names = [f"input_{i}" for i in range(len(example))]
                self.example_input_array = tuple(example)
            else:
                self.input_names, self.example_input_array = ["input"], (example,)
            self._keywords = isinstance(example, dict)
        self.probabilities = False
        if self.classification:
            with torch.no_grad():
                out = self._net(*self.example_input_array).float()
            # Rows that are already distributions are served as they are; anything else is logits.
            self.probabilities = bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out)),
                                                                         atol=1e-4))
        self.eval()

    @property
    def output_name(self) -> str:
        return "probabilities" if self.classification else "prediction"

    def _net(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.features is not None:
            given = dict(zip(self.input_names, tensors, strict=True))
            return self.net(self.features(given.get("numeric"), given.get("codes")))
        if self._keywords:
            return self.net(**dict(zip(self.input_names, tensors, strict=True)))
        return self.net(*tensors)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self._net(*tensors).float()
        if self.classification:
            return out if self.probabilities else torch.softmax(out, dim=1)
        return out.reshape(-1, 1)

    def columns(self) -> dict[str, list[str]]:
        """Input name → the raw columns it carries (only when the framework's preprocessing is inside)."""
        if self.features is None:
            return {}
        stats = self.features.stats
        return {"numeric": list(stats["numeric"]), "codes": list(stats["categorical"])}
