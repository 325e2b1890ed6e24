"""The tabular MLP, with its preprocessing inside, and the data module that feeds it.

Every statistic (numeric means and stds, category vocabularies, classes, the
regression target's scale) comes from the training split and lives in the
module: as hyperparameters, so a checkpoint rebuilds it, and as buffers, so
the exported graph takes raw feature rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from mlops.errors import DataError
from mlops.features import numeric_array
from mlops.features._encode import string_codes
from mlops.recipe.schema import DataConfig, ModelConfig
from mlops.training._split import Split


def fit_preprocessing(task: str, data: DataConfig, train: pd.DataFrame) -> dict[str, Any]:
    """The statistics of the framework's preprocessing, fitted on ``train`` only: numeric means and stds (std 0
    becomes 1), sorted category vocabularies, sorted classes and the regression target's mean and std."""
    # Column by column: the float64 copies nanmean/nanstd make are one column's, not the whole split's (at 7M
    # training rows ~1.7 GB less at the peak); the same numbers as over the [N, k] array (test_training.py).
    mean, std = np.zeros(len(data.numeric)), np.zeros(len(data.numeric))
    with np.errstate(all="ignore"):
        for j, column in enumerate(data.numeric):
            num = numeric_array(train, [column])[:, 0].astype(np.float64)
            mean[j], std[j] = np.nan_to_num(np.nanmean(num)), np.nan_to_num(np.nanstd(num))
    # A constant column carries no signal; std 1 keeps it finite instead of dividing by zero.
    std[std == 0] = 1.0
    # Each column's distinct strings (string_codes), not an object array of the whole split.
    categories = [sorted(set(string_codes(train[c])[1].tolist()) - {""}) for c in data.categorical]
    y = train[data.target]
    if task == "classification":
        classes = sorted(pd.unique(y).tolist())
        if len(classes) < 2:
            raise DataError(
                f"the training split has a single class {classes} in `data.target={data.target}`; "
                "a classifier needs at least two. Check the target column or use task=regression."
            )
        target_mean, target_std = 0.0, 1.0
    else:
        classes = []
        target_mean, target_std = float(y.mean()), float(y.std(ddof=0)) or 1.0
    return {"numeric": list(data.numeric), "categorical": list(data.categorical), "num_mean": mean.tolist(),
            "num_std": std.tolist(), "categories": categories, "classes": classes, "target_mean": target_mean,
            "target_std": target_std}


def category_codes(strings: np.ndarray, lookups: list[dict[str, int]]) -> np.ndarray:
    """``[N, k]`` int64 codes of ``categorical_strings`` through one vocabulary lookup per column (0: unknown),
    each distinct string looked up once, not once per row."""
    codes = np.zeros((len(strings), len(lookups)), dtype=np.int64)
    for j, lookup in enumerate(lookups):
        codes[:, j] = _looked_up(*pd.factorize(strings[:, j]), lookup)
    return codes


def frame_category_codes(frame: pd.DataFrame, columns: list[str], lookups: list[dict[str, int]]) -> np.ndarray:
    """``category_codes(categorical_strings(frame, columns), lookups)`` without the object array of strings of
    the whole frame in between (at 7M training rows and 2 columns: ~110 MB, and the hashing of 14M strings)."""
    codes = np.zeros((len(frame), len(lookups)), dtype=np.int64)
    for j, (column, lookup) in enumerate(zip(columns, lookups, strict=True)):
        codes[:, j] = _looked_up(*string_codes(frame[column]), lookup)
    return codes


def _looked_up(found: np.ndarray, names: np.ndarray, lookup: dict[str, int]) -> np.ndarray:
    # Each distinct string looked up once; a code -1 (string_codes' missing value) takes the last name, "".
    return np.array([lookup.get(s, 0) for s in names], dtype=np.int64)[found]


def class_indices(y: pd.Series, classes: list[Any], target: str) -> torch.Tensor:
    """Each label's position in the sorted ``classes`` (int64), looked up once per distinct label; a label the
    training split did not have is a DataError."""
    found, labels = pd.factorize(y, use_na_sentinel=False)
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted({v for v in labels.tolist() if v not in index}, key=str)
    if unseen:
        raise DataError(
            f"labels {unseen} of `data.target={target}` are absent from the training split, "
            f"which has {classes}. Use more rows or set `data.split.stratify=true`."
        )
    return torch.from_numpy(np.array([index[v] for v in labels.tolist()], dtype=np.int64)[found])


class TabularMLP(pl.LightningModule):
    """An MLP over standardised numeric columns and one-hot categorical columns.

    ``forward(numeric, codes)`` takes raw numeric values (NaN allowed) and
    category codes (0 = unknown, 1..k = the train vocabulary) and returns
    class probabilities ``[N, C]`` or predictions ``[N, 1]`` in target units.
    Build one from data with :meth:`from_train`.
    """

    # A warm start (mlops.training._warm) keeps the champion's fitted preprocessing and needs its architecture.
    fitted_hparams = ("num_mean", "num_std", "categories", "classes", "target_mean", "target_std")
    architecture_hparams = ("task", "target", "numeric", "categorical", "hidden")

    def __init__(
        self,
        *,
        task: str,
        target: str,
        numeric: list[str],
        categorical: list[str],
        num_mean: list[float],
        num_std: list[float],
        categories: list[list[str]],
        classes: list[Any],
        target_mean: float,
        target_std: float,
        hidden: list[int],
        dropout: float,
        lr: float,
        weight_decay: float,
    ):
        super().__init__()
        self.save_hyperparameters()
        # Manual optimization: a TabularDataModule batch holds several steps' rows (BATCH_ROWS) and training_step
        # takes the steps one by one, so Lightning's per-batch bookkeeping runs once per batch, not per step.
        self.automatic_optimization = False
        self.step_rows: int | None = None  # rows per step, when a batch holds several (TabularDataModule sets it)
        self.register_buffer("num_mean", torch.tensor(num_mean, dtype=torch.float32).reshape(len(numeric)))
        self.register_buffer("num_std", torch.tensor(num_std, dtype=torch.float32).reshape(len(numeric)))
        self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(target_std, dtype=torch.float32))
        # One row of 0..k per column: comparing codes against it is a one-hot that every ONNX runtime can run.
        for j, vocab in enumerate(categories):
            self.register_buffer(f"onehot_{j}", torch.arange(len(vocab) + 1).reshape(1, -1))
        self._lookup = [{v: i + 1 for i, v in enumerate(vocab)} for vocab in categories]

        width = len(numeric) + sum(len(v) + 1 for v in categories)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.classification = task == "classification"
        self._loss_sums: dict[str, tuple[Any, int]] = {}  # per stage: (sum of batch loss x rows, rows) this epoch
        layers.append(nn.Linear(width, len(classes) if self.classification else 1))
        self.net = nn.Sequential(*layers)

        if self.classification:
            classification_metrics(self, len(classes), valid_targets=True)
        else:
            self.val_rmse = torchmetrics.MeanSquaredError(squared=False)
            self.val_mae = torchmetrics.MeanAbsoluteError()
            self.test_rmse = torchmetrics.MeanSquaredError(squared=False)
            self.test_mae = torchmetrics.MeanAbsoluteError()
            self.test_r2 = torchmetrics.R2Score()

    @classmethod
    def from_train(cls, model: ModelConfig, data: DataConfig, train: pd.DataFrame) -> TabularMLP:
        """Fit the preprocessing on ``train`` (and nothing else) and build an untrained module around it."""
        stats = fit_preprocessing(model.task, data, train)
        mean, std, categories = stats["num_mean"], stats["num_std"], stats["categories"]
        classes, target_mean, target_std = stats["classes"], stats["target_mean"], stats["target_std"]
        return cls(
            task=model.task,
            target=data.target,
            numeric=list(data.numeric),
            categorical=list(data.categorical),
            num_mean=mean,
            num_std=std,
            categories=categories,
            classes=classes,
            target_mean=target_mean,
            target_std=target_std,
            hidden=list(model.hidden),
            dropout=model.dropout,
            lr=model.lr,
            weight_decay=model.weight_decay,
        )

    # ------------------------------------------------------------ encoding (pandas -> tensors)
    def encode(self, frame: pd.DataFrame, consume: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw feature rows as ``(numeric float32 [N, n_num], codes int64 [N, n_cat])``, as the ONNX graph sees them.
        ``consume``: the columns are dropped from ``frame`` once encoded (their memory freed as the tensors fill)."""
        numeric = torch.from_numpy(numeric_array(frame, self.hparams.numeric))
        if consume:
            frame.drop(columns=self.hparams.numeric, inplace=True, errors="ignore")
        codes = torch.from_numpy(frame_category_codes(frame, self.hparams.categorical, self._lookup))
        if consume:
            frame.drop(columns=self.hparams.categorical, inplace=True, errors="ignore")
        return numeric, codes

    def targets(self, frame: pd.DataFrame) -> torch.Tensor:
        y = frame[self.hparams.target]
        if not self.classification:
            return torch.tensor(y.to_numpy(dtype=np.float32))
        return class_indices(y, self.hparams.classes, self.hparams.target)

    # ------------------------------------------------------------ the network
    def _raw(self, numeric: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.hparams.numeric:
            x = torch.where(torch.isnan(numeric), self.num_mean, numeric)
            parts.append((x - self.num_mean) / self.num_std)
        for j in range(len(self.hparams.categorical)):
            parts.append((codes[:, j : j + 1] == getattr(self, f"onehot_{j}")).to(self.num_mean.dtype))
        return self.net(torch.cat(parts, dim=1))

    def forward(self, numeric: torch.Tensor | None, codes: torch.Tensor | None) -> torch.Tensor:
        raw = self._raw(numeric, codes)
        if self.classification:
            return torch.softmax(raw, dim=1)
        return raw * self.target_std + self.target_mean

    # ------------------------------------------------------------ Lightning
    def _step(self, batch: tuple[torch.Tensor, ...], stage: str, first: bool, last: bool) -> torch.Tensor:
        """One step's loss (and metrics) over `batch`; `first`/`last`: the epoch's first and last step of `stage`."""
        numeric, codes, y = batch
        raw = self._raw(numeric, codes)
        n = y.shape[0]
        if self.classification:
            loss = nn.functional.cross_entropy(raw, y)
            if stage != "train":  # the training step logs no metric: no softmax for it
                log_classification(self, torch.softmax(raw.detach(), dim=1), y, stage, log=last)
        else:
            # The loss is on the standardised target so lr means the same for any target scale; metrics are in
            # target units so they read as the user expects.
            raw = raw.squeeze(1)
            loss = nn.functional.mse_loss(raw, (y - self.target_mean) / self.target_std)
            pred = raw * self.target_std + self.target_mean
            names = {"val": ("val_rmse", "val_mae"), "test": ("test_rmse", "test_mae", "test_r2")}.get(stage, ())
            for name in names:  # accumulated every batch, logged once: as log_classification does
                metric = getattr(self, name)
                metric.update(pred, y)
                if last:
                    self.log(name, metric, on_step=False, on_epoch=True, batch_size=n)
        # The loss is logged once per epoch (at its last batch), not at every step: Lightning's `log` costs about as
        # much as a small step's forward pass (bench/README.md, "bench: scale"). It is the batch-size-weighted mean
        # over the epoch, as `log(on_epoch=True, batch_size=n)` at every step gave; averaged over the DDP ranks (a
        # no-op in one process), so every rank's early stopping and best checkpoint follow the same number.
        total, rows = (0.0, 0) if first else self._loss_sums[stage]
        self._loss_sums[stage] = (total + loss.detach() * n, rows + n)
        if last:
            total, rows = self._loss_sums.pop(stage)
            self.log(f"{stage}_loss", total / rows, on_step=False, on_epoch=True, batch_size=rows, sync_dist=True)
        return loss

    def _steps(self, batch: tuple[torch.Tensor, ...], batch_idx: int, stage: str) -> Iterator[torch.Tensor]:
        """The loss of each step in `batch`: `step_rows` rows each, in order (TabularDataModule's batches hold
        several steps' rows); the whole batch when `step_rows` is unset."""
        size = self.step_rows or len(batch[-1])
        parts = list(zip(*(t.split(size) for t in batch))) if len(batch[-1]) > size else [batch]
        final = batch_idx + 1 == self._batches(stage)
        for i, part in enumerate(parts):
            yield self._step(part, stage, first=batch_idx == 0 and i == 0, last=final and i + 1 == len(parts))

    def _batches(self, stage: str) -> float:
        trainer = self.trainer
        if stage == "train":
            return trainer.num_training_batches
        return (trainer.num_val_batches if stage == "val" else trainer.num_test_batches)[0]

    # Lightning's per-step bookkeeping, made cheap for this module (bench/README.md, "bench: scale": it was most of
    # what `fit` costs over a plain PyTorch loop). Lightning walks every batch through its generic collection
    # mover, even on the CPU; a batch here is a tuple of CPU tensors that stay where they are.
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type == "cpu" and isinstance(batch, tuple) and all(t.device.type == "cpu" for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the running hook in `_current_fx_name` around every hook call, through nn.Module's
        # __setattr__ (which looks for parameters, modules and buffers): a plain attribute, set as one.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        for loss in self._steps(batch, batch_idx, "train"):
            optimizer.zero_grad()
            self.manual_backward(loss)  # the strategy's and precision's backward (DDP's gradient sync, scaling)
            optimizer.step()  # counts the global step, as the automatic loop does
        return loss.detach()

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        for _ in self._steps(batch, batch_idx, "val"):
            pass

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        for _ in self._steps(batch, batch_idx, "test"):
            pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class _Rows(TensorDataset):
    """A TensorDataset whose DataLoader batch is one gather per tensor (`__getitems__`), not `batch_size` row
    lookups stacked by the default collate: the same batches in the same order, ~10x less time per batch."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        at = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[at] for t in self.tensors)


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch  # _Rows already made the batch; a module-level function, so loader workers can pickle it


class _Shuffled(RandomSampler):
    """`RandomSampler(rows)`: the same permutation from the same draw of torch's global RNG, given out of the
    permutation tensor a slice at a time. RandomSampler makes a Python list of every row position per epoch (and a
    second one, discarded, at its end): at 7M training rows ~250 MB each, the fit's peak (bench/README.md,
    "bench: scale", third pass). A sampler given its own generator, or drawing with replacement, is RandomSampler."""

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        if self.generator is not None or self.replacement or self.num_samples != n:
            yield from super().__iter__()
            return
        generator = torch.Generator()
        generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        for part in torch.randperm(n, generator=generator).split(1 << 16):
            yield from part.tolist()


def batch_loader(dataset: TensorDataset, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """The DataLoader of a split: `batch_size` rows, shuffled or not, as `DataLoader(dataset, batch_size,
    shuffle)` gives them (a RandomSampler, so Lightning's distributed sampler still applies), gathered per batch."""
    rows = _Rows(*dataset.tensors)
    # No `shuffle=` with the sampler: Lightning reads a DataLoader's shuffle from that argument when it has one.
    return DataLoader(rows, batch_size=batch_size, sampler=_Shuffled(rows) if shuffle else None,
                      num_workers=num_workers, collate_fn=_as_batch)


def classification_metrics(module: pl.LightningModule, n: int, valid_targets: bool = False) -> None:
    """The classifier metrics `log_classification` logs, as `module`'s attributes (n classes). `valid_targets`: the
    targets are class indices 0..n-1 and the predictions probabilities by construction (class_indices, softmax),
    so torchmetrics need not check them at every batch (half of an update's time, the same numbers)."""
    check = {"validate_args": not valid_targets}
    module.val_acc = torchmetrics.classification.MulticlassAccuracy(n, average="micro", **check)
    module.test_acc = torchmetrics.classification.MulticlassAccuracy(n, average="micro", **check)
    if n == 2:
        module.test_f1 = torchmetrics.classification.BinaryF1Score(**check)
        module.test_auc = torchmetrics.classification.BinaryAUROC(**check)
    else:
        module.test_f1 = torchmetrics.classification.MulticlassF1Score(n, average="macro", **check)


def log_classification(module: pl.LightningModule, probs: torch.Tensor, y: torch.Tensor, stage: str,
                       log: bool = True) -> None:
    """val_acc, or test_acc, test_f1 and (binary) test_auc of one batch: every built-in classifier's metrics.

    The metrics accumulate every batch; `log=False` leaves them unlogged for this batch. Lightning computes a
    logged metric object over the whole epoch whichever batches logged it, so logging it at the epoch's last
    batch only gives the same numbers for a fraction of the cost (each `log` moves Lightning's result collection
    to the device: ~2 ms a step, bench/README.md, "bench: scale")."""
    n = len(y)
    if stage == "val":
        module.val_acc.update(probs, y)
        if log:
            module.log("val_acc", module.val_acc, on_step=False, on_epoch=True, batch_size=n)
    elif stage == "test":
        module.test_acc.update(probs, y)
        binary = probs.shape[1] == 2
        module.test_f1.update(probs[:, 1] if binary else probs, y)
        if binary:
            module.test_auc.update(probs[:, 1], y)
        if log:
            module.log("test_acc", module.test_acc, on_step=False, on_epoch=True, batch_size=n)
            module.log("test_f1", module.test_f1, on_step=False, on_epoch=True, batch_size=n)
            if binary:
                module.log("test_auc", module.test_auc, on_step=False, on_epoch=True, batch_size=n)


class SplitDataModule(pl.LightningDataModule):
    """The three splits of a Split as DataLoaders; a subclass says how a frame becomes a TensorDataset."""

    def __init__(self, split: Split, batch_size: int, num_workers: int = 0):
        super().__init__()
        self.split, self.batch_size, self.num_workers = split, batch_size, num_workers

    def _dataset(self, frame: pd.DataFrame) -> TensorDataset:
        raise NotImplementedError

    def _loader(self, frame: pd.DataFrame, shuffle: bool) -> DataLoader:
        return batch_loader(self._dataset(frame), self.batch_size, shuffle, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.split.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.split.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.split.test, shuffle=False)


# Rows in one Lightning batch of the tabular MLP: a whole number of `model.batch_size` steps, which its training_step
# takes one by one, in order (the same steps as one batch each: test_training.py). Lightning's bookkeeping around a
# batch (its loop, the hooks of the module and of every callback, the fetcher, the logger) costs the same whatever
# the batch; at one step per batch it was most of what `fit` cost over a plain loop (bench/README.md, "bench:
# scale", "Third pass: training path"). 32 steps: 8 left fit at 1.11x the plain loop, 32 at 1.06x (the lead's
# follow-up there); a batch of 32768 rows is a few MB of features.
BATCH_ROWS = 32768


class TabularDataModule(SplitDataModule):
    """The three splits, encoded by the module's own train-fitted preprocessing."""

    def __init__(self, module: TabularMLP, split: Split, batch_size: int, num_workers: int = 0):
        super().__init__(split, batch_size * max(1, BATCH_ROWS // batch_size), num_workers)
        self.module = module
        module.step_rows = batch_size

    def _dataset(self, frame: pd.DataFrame) -> TensorDataset:
        # A split whose training rows nobody needs after the fit gives them up as they are encoded: at 10M rows
        # the fit holds ~0.45 GB of tensors instead of those and the 0.73 GB frame (bench/README.md, "bench: scale").
        consume = self.split.consume_train and frame is self.split.train
        y = self.module.targets(frame)
        numeric, codes = self.module.encode(frame, consume=consume)
        if consume:
            frame.drop(columns=[self.module.hparams.target], inplace=True, errors="ignore")
        return TensorDataset(numeric, codes, y)


@torch.no_grad()
def predict_frame(module: TabularMLP, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities ``[N, C]`` (classification) or predictions ``[N]`` (regression) for raw rows, in torch."""
    was_training = module.training
    module.eval()
    try:
        numeric, codes = module.encode(frame)
        dtype = module.num_mean.dtype
        out = module(numeric.to(module.device, dtype), codes.to(module.device)).float().cpu().numpy()
    finally:
        module.train(was_training)
    return out if module.classification else out[:, 0]
