"""Training and evaluation with a Lightning Trainer built from the recipe."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from mlops._atomic import fsync_path, write_atomic
from mlops.errors import ConfigError, MlopsError, Problem
from mlops.recipe.schema import ComputeConfig, Config
from mlops.training import _ddp
from mlops.training._family import load_checkpoint, model_family
from mlops.training._module import TabularDataModule, TabularMLP
from mlops.training._split import Split

CHECKPOINT = "model.ckpt"
HISTORY = "history.json"
MODULE = "module.json"  # a team's own module: its import path and source hash, for the lineage
# The whole training state (weights, optimizer, loops, callbacks, RNGs) after the last finished epoch: a fit
# killed mid-way resumes from it instead of epoch 0. Removed once the fit has finished.
LAST = "last.ckpt"


@dataclass(frozen=True)
class FitResult:
    """The best module (eval mode), where it was saved, its validation metrics and the per-epoch history."""

    module: TabularMLP
    checkpoint: Path
    val_metrics: dict[str, float]
    epochs: int
    history: list[dict[str, float]]
    resumed_after: int | None = None  # epochs an interrupted fit had finished, when this one resumed it


class _FitRecord(_ddp.RankRecord):
    """What the framework records of a fit, in one callback, last in the list: at every epoch's end the history
    row, the finite-metrics check, then the full training state in ``last`` (atomically); at the fit's end the
    ranks (RankRecord). One callback rather than four, because Lightning calls every hook of every callback at
    every step, whether it does anything or not (bench/README.md, "bench: scale")."""

    def __init__(self, out_dir: Path, compute: ComputeConfig, last: Path) -> None:
        super().__init__(out_dir, compute)
        self.last = last
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # By now the epoch's train metrics are reduced, this epoch's validation has run, and the best checkpoint
        # and early stopping (earlier in the list) have seen it.
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items())}
        self.rows.append({"epoch": trainer.current_epoch, **metrics})
        _require_finite(trainer)
        _save_last(trainer, self.last)

    # Saved in last.ckpt: a resumed fit's history still has the epochs before the interruption, and its RNGs
    # shuffle and drop out as the uninterrupted fit would have.
    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), **_rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        _restore_rng(state_dict)


def _save_last(trainer: pl.Trainer, path: Path) -> None:
    """The full training state to ``path``, atomically (a SIGKILL mid-write leaves the previous epoch's file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp)  # every rank calls it; only global rank 0 writes
    if trainer.is_global_zero:
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)


def _rng_state() -> dict[str, Any]:
    # Tensors and plain tuples only: Lightning loads checkpoints with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}


def _restore_rng(state: dict[str, Any]) -> None:
    # Restored as Lightning restores the checkpoint, before it builds the resumed epoch's data iterator (whose
    # shuffle seed is drawn from torch's RNG), as in the uninterrupted fit after this epoch's end.
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _require_finite(trainer: pl.Trainer) -> None:
    """Stop training with an MlopsError the first epoch a loss or metric is NaN or infinite.

    Lightning's `detect_anomaly` checks every backward pass (slow), and EarlyStopping's `check_finite` only
    stops quietly, keeping an earlier epoch; a non-finite number means the data or the settings are wrong,
    which the user must hear about, naming the epoch and the metric."""
    bad = {k: float(v) for k, v in sorted(trainer.callback_metrics.items())
           if v.numel() == 1 and not math.isfinite(float(v))}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise MlopsError(f"training stopped at epoch {trainer.current_epoch}: {shown} (not finite), "
                         "so no model is registered. Hint: look for extreme values in the numeric columns "
                         "(data.checks.non_finite), or lower model.lr.")


# Multiply-adds per training step (batch rows x parameters) below which one intra-op thread is faster: a step that
# small is over before the threads agree (bench/README.md, "bench: scale": on 2 busy cores two threads made the
# 1024-row batches of a 5k-parameter MLP several times slower). Above it, torch's own thread count.
SINGLE_THREAD_MACS = 2**26


def intra_op_threads(module: torch.nn.Module, batch_size: int) -> int:
    """The intra-op threads for training `module` on batches of `batch_size` rows: 1 for small steps, else torch's
    default (the cores it sees)."""
    params = sum(p.numel() for p in module.parameters())
    return 1 if batch_size * params < SINGLE_THREAD_MACS else _DEFAULT_THREADS


_DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def _tabular_run(threads: int = 1) -> Iterator[None]:
    before, fill = torch.get_num_threads(), torch.utils.deterministic.fill_uninitialized_memory
    # Scoped, so the caller's settings survive.
    torch.set_num_threads(threads)
    # compute.deterministic=true turns on torch's deterministic algorithms, which also fill every new tensor's memory
    # with NaN to expose kernels that read it uninitialised: a debugging aid that costs a write of every intermediate
    # tensor at every step and changes no result (bench/README.md, "bench: scale").
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with warnings.catch_warnings():
            # compute.num_workers=0 is the deliberate default for tiny data; Lightning would warn on every loader.
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
            # TabularMLP.transfer_batch_to_device is the module's own on purpose (a datamodule feeds it).
            warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`.*")
            # A resumed fit finds its own best checkpoint so far in the scratch folder, on purpose.
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
            yield
    finally:
        torch.set_num_threads(before)
        torch.utils.deterministic.fill_uninitialized_memory = fill



def _datamodule(family: object, module: pl.LightningModule, cfg: Config, split: Split) -> pl.LightningDataModule:
    """The family's own datamodule when it has one (the `lightning` flavor's), else the tabular MLP's."""
    make = getattr(family, "datamodule", None)
    if make is not None:
        return make(module, split, cfg.model.batch_size, cfg.compute.num_workers)
    return TabularDataModule(module, split, cfg.model.batch_size, cfg.compute.num_workers)


def fit(
    cfg: Config, split: Split, out_dir: Path, *, loggers: list | None = None, progress: bool = False,
    project: Path | None = None, init_from: Path | None = None,
) -> FitResult:
    """Train ``cfg.model`` on ``split`` and keep the best epoch by ``cfg.model.early_stopping.monitor``.

    Writes ``out_dir/model.ckpt`` (the best weights, loadable by :func:`load_module`) and
    ``out_dir/history.json`` (one row of metrics per epoch) and ``out_dir/compute.json`` (the strategy and the ranks
    that trained). The same recipe and data give the same metrics. More than one process (``compute.devices`` x
    ``num_nodes``) runs in worker processes started by :mod:`mlops.training._ddp`, which writes the same files.
    A family with ``checkpoint_extras`` (a team's own module) also gets them into the checkpoint, and its
    ``lineage`` into ``out_dir/module.json``; `project` is the folder its module imports from. `init_from`: a
    checkpoint whose weights the fit starts from (mlops.training._warm).

    ``out_dir`` is one training key's folder: while the fit runs, ``out_dir/last.ckpt`` holds the state after
    the last finished epoch. If a fit was killed, the next fit into the same folder resumes from it (the
    result's ``resumed_after`` says after how many epochs) and ends where the uninterrupted one would have.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # "GPU available", "Tip: try litlogger" at every Trainer(): noise in `mlops up`'s progress output.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _ddp.check_machine(cfg.compute)
    if _ddp.launches(cfg.compute):
        return _fit_in_workers(cfg, split, out_dir, loggers, project, init_from)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    family = model_family(cfg.model.flavor)
    _import_from(project, family)
    module = family.from_train(cfg.model, cfg.data, split.train)
    if init_from is not None:  # model.init_from: champion; a resumed fit restores last.ckpt over it anyway
        from mlops.training._warm import warm_start

        module = warm_start(family, module, Path(init_from))
    data = _datamodule(family, module, cfg, split)

    es = cfg.model.early_stopping
    # A fixed scratch path, so every DDP rank agrees on where the best checkpoint is.
    work = out_dir / ".fit-checkpoints"
    last = out_dir / LAST
    resumed_after = _finished_epochs(last)
    if resumed_after is None:
        last.unlink(missing_ok=True)  # unreadable (it never is half-written, but a torch upgrade could do it)
        shutil.rmtree(work, ignore_errors=True)  # on a resume the best checkpoint so far is in there: kept
    best = ModelCheckpoint(
        dirpath=work, filename="best", monitor=es.monitor, mode=es.mode, save_top_k=1, save_weights_only=True
    )
    callbacks: list[pl.Callback] = [best]
    if es.enabled:
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience))
    history = _FitRecord(out_dir, cfg.compute, last)  # last: its last.ckpt holds the others' state
    callbacks.append(history)
    c = cfg.compute
    trainer = pl.Trainer(
        accelerator=c.accelerator,
        devices=c.devices,
        num_nodes=c.num_nodes,
        strategy=_ddp.trainer_strategy(c),
        precision=c.precision,
        deterministic=c.deterministic,
        max_epochs=cfg.model.max_epochs,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # Metrics are logged per epoch only, so a step interval longer than a tiny epoch would only warn.
        log_every_n_steps=1,
        default_root_dir=out_dir,
    )
    checkpoint = out_dir / CHECKPOINT
    if trainer.is_global_zero:
        _say_resuming(cfg, resumed_after, last)
    try:
        try:
            with _tabular_run(intra_op_threads(module, cfg.model.batch_size)):
                trainer.fit(module, datamodule=data, ckpt_path=last if resumed_after is not None else None)
        except Exception:
            # Lightning's own words for a module that never logs the monitored metric name the callback, not
            # the recipe key: say which key and which metrics it does log.
            _missing_monitor(trainer, es.monitor, module)
            raise
        extras = getattr(family, "checkpoint_extras", None)
        if extras is not None and trainer.is_global_zero:
            # The team's class reloads its own weights; what the framework added rides along in the checkpoint.
            saved = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
            saved["mlops"] = extras(module)
            torch.save(saved, best.best_model_path)
        trainer.strategy.barrier()
        trained = load_checkpoint(family, best.best_model_path, map_location="cpu").eval()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            os.replace(best.best_model_path, checkpoint)
            write_atomic(out_dir / HISTORY, json.dumps(history.rows, indent=2))
            if extras is not None:
                write_atomic(out_dir / MODULE, json.dumps(family.lineage(trained), indent=2))
            last.unlink(missing_ok=True)  # finished: the next fit of this key starts afresh
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        # A fit that raised keeps last.ckpt and the best checkpoint it names, like one that was killed: the next
        # fit resumes. Without last.ckpt (killed in its first epoch) there is nothing to keep.
        if trainer.is_global_zero and not last.is_file():
            shutil.rmtree(work, ignore_errors=True)
        raise

    return _result(cfg, trained, checkpoint, history.rows, resumed_after)


def _import_from(project: Path | None, family: object) -> None:
    """A team's own module (a family with checkpoint extras) imports from the project folder."""
    if project is not None and hasattr(family, "checkpoint_extras"):
        from mlops.training._lightning import importable

        importable(project)


def _result(cfg: Config, trained: pl.LightningModule, checkpoint: Path, rows: list[dict[str, float]],
            resumed_after: int | None) -> FitResult:
    es = cfg.model.early_stopping
    # ModelCheckpoint replaces its best only on a strict improvement, so the first best row is the saved epoch.
    pick = min if es.mode == "min" else max
    best_row = pick(rows, key=lambda r: r[es.monitor])
    val_metrics = {k: v for k, v in best_row.items() if k.startswith("val_")}
    return FitResult(module=trained, checkpoint=checkpoint, val_metrics=val_metrics, epochs=len(rows), history=rows,
                     resumed_after=resumed_after)


def _say_resuming(cfg: Config, resumed_after: int | None, last: Path) -> None:
    if resumed_after is not None:
        print(f"  resuming training after epoch {resumed_after} of {cfg.model.max_epochs} from {last} "
              "(left by an interrupted run)", file=sys.stderr, flush=True)


def _fit_in_workers(cfg: Config, split: Split, out_dir: Path, loggers: list | None, project: Path | None,
                    init_from: Path | None) -> FitResult:
    """`fit` across ``compute.devices`` worker processes (mlops.training._ddp says why it starts them itself): the
    workers write ``out_dir`` as one in-process fit would; the tracker hears the history from this process."""
    last = out_dir / LAST
    resumed_after = _finished_epochs(last)
    _say_resuming(cfg, resumed_after, last)
    _ddp.launch(cfg, split, out_dir, project, last, init_from)
    rows = json.loads((out_dir / HISTORY).read_text())
    family = model_family(cfg.model.flavor)
    _import_from(project, family)
    checkpoint = out_dir / CHECKPOINT
    trained = load_checkpoint(family, checkpoint, map_location="cpu").eval()
    for logger in loggers or []:
        logger.log_hyperparams(dict(trained.hparams))
        for row in rows:
            logger.log_metrics(dict(row), step=int(row["epoch"]))
        logger.save()
        logger.finalize("success")
    return _result(cfg, trained, checkpoint, rows, resumed_after)


def _finished_epochs(last: Path) -> int | None:
    """How many epochs the interrupted fit that left ``last`` had finished; None if there is none to resume."""
    if not last.is_file():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        return int(state["epoch"]) + 1
    except Exception:  # noqa: BLE001 - any unreadable checkpoint means: start afresh
        return None


def evaluate(cfg: Config, module: TabularMLP, split: Split) -> dict[str, float]:
    """Test metrics of ``module`` on ``split.test``: test_loss, test_acc, test_f1, test_auc (binary) or
    test_loss, test_rmse, test_mae, test_r2."""
    trainer = pl.Trainer(
        accelerator=cfg.compute.accelerator,
        devices=1,
        precision=cfg.compute.precision,
        deterministic=cfg.compute.deterministic,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.gettempdir(),
    )
    data = _datamodule(model_family(cfg.model.flavor), module, cfg, split)
    with _tabular_run(intra_op_threads(module, cfg.model.batch_size)):
        (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    if not metrics:
        raise ConfigError([Problem("model.module", f"{type(module).__name__}.test_step logs no metric, so there is "
                                   "nothing to evaluate or gate on", "",
                                   "log test metrics in test_step, e.g. self.log('test_acc', acc)")])
    return {k: float(v) for k, v in sorted(metrics.items())}


def _missing_monitor(trainer: pl.Trainer, monitor: str, module: pl.LightningModule) -> None:
    if monitor not in trainer.callback_metrics:
        logged = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
        raise ConfigError([Problem("model.early_stopping.monitor", f"{type(module).__name__} never logs "
                                   f"{monitor!r}, which early stopping and the best checkpoint follow; it logs: "
                                   f"{logged}", "", f"self.log('{monitor}', loss) in validation_step")])
