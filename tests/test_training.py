"""Training on tiny data with real Lightning: the split, train-only preprocessing, determinism, metrics."""

from __future__ import annotations

import json
import re

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from _training_cfg import breast_cancer, fitted, synthetic_cfg, synthetic_frame

import mlops.training
from mlops.errors import DataError
from mlops.training import _fit, _module
from mlops.training import (Split, TabularMLP, evaluate, fit, load_module, predict_frame, split_frame,
                            split_positions)


def test_public_api_is_sorted_and_complete():
    assert mlops.training.__all__ == sorted(mlops.training.__all__)
    assert {"FitResult", "Split", "evaluate", "fit", "load_module", "predict_frame", "split_frame"} <= set(
        mlops.training.__all__
    )


# ---------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_complete():
    frame, cfg = breast_cancer()
    a = split_frame(frame, cfg.data, "classification")
    b = split_frame(frame, cfg.data, "classification")
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test), strict=True):
        pd.testing.assert_frame_equal(x, y)
    parts = [set(a.train.index), set(a.val.index), set(a.test.index)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(frame.index)
    n = len(frame)
    assert abs(len(a.test) - 0.15 * n) <= 1 and abs(len(a.val) - 0.15 * n) <= 1


def test_split_seed_and_stratification():
    frame, cfg = breast_cancer()
    split = split_frame(frame, cfg.data, "classification")
    reseeded = cfg.data.model_copy(update={"split": cfg.data.split.model_copy(update={"seed": 7})})
    other = split_frame(frame, reseeded, "classification")
    assert set(split.test.index) != set(other.test.index)
    overall = frame["target"].mean()
    for part in (split.train, split.val, split.test):
        assert abs(part["target"].mean() - overall) < 0.02


def test_split_keeps_only_feature_and_target_columns():
    split = split_frame(synthetic_frame(), synthetic_cfg().data, "classification")
    assert list(split.train.columns) == ["a", "b", "colour", "label"]


def test_split_names_missing_columns():
    frame = synthetic_frame().drop(columns=["colour"])
    with pytest.raises(DataError, match=re.escape("the data has no column(s) ['colour']")):
        split_frame(frame, synthetic_cfg().data, "classification")


def test_split_refuses_rows_without_target():
    frame = synthetic_frame()
    frame.loc[[3, 5], "label"] = None
    with pytest.raises(DataError, match=r"2 row\(s\) have no value in the target column `data.target=label`"):
        split_frame(frame, synthetic_cfg().data, "classification")


# ---------------------------------------------------------------- preprocessing
def test_preprocessing_stats_come_from_train_only(tmp_path):
    cfg = synthetic_cfg(max_epochs=1)
    split = split_frame(synthetic_frame(), cfg.data, "classification")
    wild = Split(
        train=split.train,
        val=split.val.assign(a=1e6, colour="violet"),
        test=split.test.assign(b=-1e6, colour="ultraviolet"),
    )
    modules = [fit(cfg, s, tmp_path / name).module for s, name in ((split, "plain"), (wild, "wild"))]
    train = split.train
    for m in modules:
        np.testing.assert_allclose(m.num_mean.numpy(), train[["a", "b"]].mean().to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(m.num_std.numpy(), train[["a", "b"]].std(ddof=0).to_numpy(), rtol=1e-5)
        assert m.hparams.categories == [sorted(train["colour"].unique())]
        assert m.hparams.classes == ["no", "yes"]


def test_numeric_nan_is_imputed_with_the_train_mean():
    cfg, split, result = fitted("synthetic")
    module = result.module
    row = split.test.iloc[:1].copy()
    with_nan = row.assign(b=np.nan)
    with_mean = row.assign(b=float(module.num_mean[1]))
    np.testing.assert_allclose(predict_frame(module, with_nan), predict_frame(module, with_mean), atol=1e-7)


def test_unseen_and_missing_categories_share_the_unknown_code():
    _, split, result = fitted("synthetic")
    rows = pd.concat([split.test.iloc[:1]] * 3).assign(colour=["violet", None, np.nan])
    _, codes = result.module.encode(rows)
    assert codes[:, 0].tolist() == [0, 0, 0]
    seen = split.test.iloc[:3].assign(colour=["blue", "green", "red"])
    assert result.module.encode(seen)[1][:, 0].tolist() == [1, 2, 3]


def test_regression_target_is_standardised_on_train_and_restored_in_the_output():
    _, split, result = fitted("diabetes")
    module = result.module
    assert float(module.target_mean) == pytest.approx(split.train["target"].mean(), rel=1e-6)
    assert float(module.target_std) == pytest.approx(split.train["target"].std(ddof=0), rel=1e-6)
    pred = predict_frame(module, split.test)
    assert pred.shape == (len(split.test),)
    # In target units: diabetes progression is ~25..346, a standardised output would sit near 0.
    assert 80 < pred.mean() < 250


# ---------------------------------------------------------------- fit
def test_fit_is_deterministic_and_writes_its_files(tmp_path):
    cfg = synthetic_cfg(max_epochs=3)
    split = split_frame(synthetic_frame(), cfg.data, "classification")
    a, b = fit(cfg, split, tmp_path / "a"), fit(cfg, split, tmp_path / "b")
    assert a.history == b.history and a.val_metrics == b.val_metrics
    for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert a.epochs == len(a.history) == cfg.model.max_epochs
    assert [r["epoch"] for r in a.history] == list(range(a.epochs))
    assert {"train_loss", "val_loss", "val_acc"} <= set(a.history[0])
    assert json.loads((tmp_path / "a" / "history.json").read_text()) == a.history
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["compute.json", "history.json", "model.ckpt"]
    assert a.checkpoint == tmp_path / "a" / "model.ckpt"
    assert not a.module.training
    # A split whose training rows may be consumed (the train step's) trains the same model; the fit frees those
    # rows column by column as it encodes them, and leaves the other splits as they were.
    owned = Split(split.train.copy(), split.val, split.test, consume_train=True)
    c = fit(cfg, owned, tmp_path / "c")
    assert c.history == a.history and c.val_metrics == a.val_metrics
    for x, y in zip(a.module.state_dict().values(), c.module.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert list(owned.train.columns) == [] and len(owned.train) == len(split.train)
    assert owned.val is split.val and list(owned.val.columns) == list(split.train.columns)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_several_steps_per_lightning_batch_are_the_steps_of_one_batch_each(tmp_path, monkeypatch, task):
    """TabularDataModule hands Lightning BATCH_ROWS rows at a time and the module steps through them batch_size
    rows at a time (manual optimization): the same optimizer steps, in the same order, as one batch per step
    (bench/README.md, "Third pass: training path"). 168 training rows in batches of 32: groups of 3 steps, the
    last group short and its last step 8 rows."""
    frame = synthetic_frame()
    if task == "regression":
        frame = frame.assign(label=frame["a"] * 2.0 + frame["noise"])
    cfg = synthetic_cfg(max_epochs=3, task=task, dropout=0.2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"numeric": ["b"]})}) if task == "regression" \
        else cfg
    split = split_frame(frame, cfg.data, task)
    assert len(split.train) % 32 and len(split.train) > 96
    steps_seen: list[int] = []

    class Count(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            steps_seen.append(trainer.global_step)

    results = []
    for rows in (1, 96):  # one step per Lightning batch; three
        monkeypatch.setattr(_module, "BATCH_ROWS", rows)
        monkeypatch.setattr(_fit, "_FitRecord", type("Counted", (_fit._FitRecord, Count), {}))
        results.append(fit(cfg, split, tmp_path / str(rows)))
    one, grouped = results
    assert grouped.history == one.history and grouped.val_metrics == one.val_metrics
    for x, y in zip(one.module.state_dict().values(), grouped.module.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert evaluate(cfg, grouped.module, split) == evaluate(cfg, one.module, split)
    assert steps_seen == [3 * -(-len(split.train) // 32)] * 2  # optimizer steps, as Lightning counts them


def test_a_different_seed_trains_differently(tmp_path):
    cfg = synthetic_cfg(max_epochs=2)
    split = split_frame(synthetic_frame(), cfg.data, "classification")
    other = cfg.model_copy(update={"seed": 1})
    assert fit(cfg, split, tmp_path / "a").history != fit(other, split, tmp_path / "b").history


def test_val_metrics_are_those_of_the_best_epoch_and_the_checkpoint_holds_it():
    cfg, split, result = fitted("synthetic")
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.val_metrics == {k: v for k, v in best.items() if k.startswith("val_")}
    # Re-evaluating the saved weights on val reproduces the best epoch's val accuracy.
    val_as_test = Split(train=split.train, val=split.val, test=split.val)
    again = evaluate(cfg, load_module(result.checkpoint), val_as_test)
    assert again["test_acc"] == pytest.approx(result.val_metrics["val_acc"], abs=1e-6)
    assert again["test_loss"] == pytest.approx(result.val_metrics["val_loss"], rel=1e-5)


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path):
    frame = synthetic_frame()
    # A label that is pure noise: val loss can only get worse once the net starts to memorise.
    frame["label"] = np.random.default_rng(1).choice(["no", "yes"], len(frame))
    cfg = synthetic_cfg(max_epochs=40, hidden=[64], lr=1e-2, early_stopping={"patience": 2})
    result = fit(cfg, split_frame(frame, cfg.data, "classification"), tmp_path)
    assert result.epochs < 40
    best_epoch = min(result.history, key=lambda r: r["val_loss"])["epoch"]
    assert result.epochs == best_epoch + 1 + 2


def test_breast_cancer_reaches_95_percent_test_accuracy():
    cfg, split, result = fitted("breast_cancer")
    metrics = evaluate(cfg, result.module, split)
    assert set(metrics) == {"test_loss", "test_acc", "test_f1", "test_auc"}
    assert all(type(v) is float for v in metrics.values())
    assert metrics["test_acc"] >= 0.95, metrics
    assert metrics["test_auc"] >= 0.98, metrics


def test_multiclass_metrics_have_no_auc():
    frame = synthetic_frame()
    frame["label"] = np.where(frame["a"] > 11, "high", np.where(frame["a"] < 9, "low", "mid"))
    cfg = synthetic_cfg(max_epochs=2)
    split = split_frame(frame, cfg.data, "classification")
    module = TabularMLP.from_train(cfg.model, cfg.data, split.train)
    assert module.hparams.classes == ["high", "low", "mid"]
    assert set(evaluate(cfg, module, split)) == {"test_loss", "test_acc", "test_f1"}
    assert predict_frame(module, split.test).shape == (len(split.test), 3)


def test_regression_metrics():
    cfg, split, result = fitted("diabetes")
    metrics = evaluate(cfg, result.module, split)
    assert set(metrics) == {"test_loss", "test_rmse", "test_mae", "test_r2"}
    pred = predict_frame(result.module, split.test)
    y = split.test["target"].to_numpy()
    assert metrics["test_rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - y) ** 2))), rel=1e-4)
    assert metrics["test_mae"] == pytest.approx(float(np.mean(np.abs(pred - y))), rel=1e-4)
    assert metrics["test_r2"] > 0.2, metrics
    assert {"val_rmse", "val_mae", "val_loss"} == set(result.val_metrics)


def test_load_module_reproduces_the_predictions():
    _, split, result = fitted("synthetic")
    reloaded = load_module(result.checkpoint)
    assert not reloaded.training
    np.testing.assert_array_equal(predict_frame(reloaded, split.test), predict_frame(result.module, split.test))


def test_encoding_per_distinct_value_matches_value_by_value():
    """categorical_strings, category_codes and class_indices convert each distinct value once; the result must be
    that of converting every value (mlops.features._as_string, the vocabulary dict, the class dict)."""
    from mlops.features import categorical_strings
    from mlops.features._encode import _as_string
    from mlops.training._module import category_codes, class_indices, frame_category_codes

    frame = pd.DataFrame({
        "s": ["a", None, "b", np.nan, "a", ""],
        "f": [3.0, np.nan, 2.5, 3.0, -0.0, 1e20],
        "i": [1, 2, 3, 1, 2, 3],
        "b": [True, False, True, True, False, False],
        "mixed": [True, 1, "1", None, 3.0, "True"],  # True and 1 hash alike: value by value, "True" and "1"
        "cat": pd.Categorical(["x", "y", None, "x", "y", "x"]),
    }, index=[10, 11, 12, 13, 14, 15])
    columns = list(frame.columns)
    got = categorical_strings(frame, columns)
    want = np.array([[_as_string(v) for v in row] for row in frame[columns].to_numpy(dtype=object)], dtype=object)
    assert got.tolist() == want.tolist()
    assert got[:, columns.index("mixed")].tolist() == ["True", "1", "1", "", "3", "True"]
    lookups = [{v: i + 1 for i, v in enumerate(sorted(set(want[:, j]) - {""})[:2])} for j in range(len(columns))]
    assert category_codes(got, lookups).tolist() == [[lk.get(s, 0) for lk, s in zip(lookups, row)] for row in want]
    # The module's encoding goes from the frame straight to codes (no object array of strings): the same codes.
    assert frame_category_codes(frame, columns, lookups).tolist() == category_codes(got, lookups).tolist()
    assert frame_category_codes(frame.iloc[:0], columns, lookups).shape == (0, len(columns))
    y = pd.Series(["yes", "no", "no", "maybe", "yes"])
    assert class_indices(y, ["maybe", "no", "yes"], "t").tolist() == [2, 1, 1, 0, 2]
    with pytest.raises(DataError, match=r"labels \['maybe'\]"):
        class_indices(y, ["no", "yes"], "t")


def test_the_shuffled_loader_gives_a_plain_dataloaders_batches():
    """batch_loader's sampler hands out RandomSampler's permutation a slice at a time (no list of every row
    position per epoch): the same batches in the same order over epochs, the global RNG left where a plain
    `DataLoader(shuffle=True)` leaves it, and Lightning still sees a shuffled loader (its distributed sampler)."""
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled
    from torch.utils.data import DataLoader, TensorDataset

    from mlops.training._module import batch_loader

    rows = TensorDataset(torch.arange(10_007, dtype=torch.float32), torch.arange(10_007))
    for seed in (0, 3):
        torch.manual_seed(seed)
        plain = [y.tolist() for _ in range(2) for _, y in DataLoader(rows, batch_size=64, shuffle=True)]
        after_plain = torch.rand(3)
        torch.manual_seed(seed)
        ours = [y.tolist() for _ in range(2) for _, y in batch_loader(rows, 64, shuffle=True)]
        assert ours == plain and torch.equal(torch.rand(3), after_plain)
    assert _is_dataloader_shuffled(batch_loader(rows, 64, shuffle=True))
    assert not _is_dataloader_shuffled(batch_loader(rows, 64, shuffle=False))
    assert [y.tolist() for _, y in batch_loader(rows, 5000, shuffle=False)][-1] == list(range(10_000, 10_007))


def test_preprocessing_statistics_column_by_column_match_the_whole_array():
    """fit_preprocessing computes each numeric column's mean and std on its own (memory: one column's float64
    copies at a time); the numbers must be those of nanmean/nanstd over the whole float32-rounded [N, k] array,
    to the bit, NaNs, a constant column and an all-NaN column included."""
    from mlops.features import numeric_array
    from mlops.training._module import fit_preprocessing

    rng = np.random.default_rng(7)
    n = 20_000
    frame = pd.DataFrame({"a": rng.standard_normal(n) * 1e3 + 1e6, "b": rng.exponential(2.0, n),
                          "c": np.full(n, 3.0), "d": np.full(n, np.nan), "i": rng.integers(0, 9, n),
                          "y": rng.integers(0, 2, n)})
    frame.loc[rng.random(n) < 0.05, "a"] = np.nan
    _, cfg = breast_cancer()
    data = cfg.data.model_copy(update={"numeric": ["a", "b", "c", "d", "i"], "categorical": [], "target": "y"})
    stats = fit_preprocessing("classification", data, frame)
    # What fit_preprocessing computed before: the whole [N, k] float32 array as pandas gives it, in float64.
    whole = frame[data.numeric].to_numpy(dtype=np.float32, na_value=np.nan).astype(np.float64)
    np.testing.assert_array_equal(numeric_array(frame, data.numeric), whole.astype(np.float32))
    with np.errstate(all="ignore"):
        mean, std = np.nan_to_num(np.nanmean(whole, axis=0)), np.nan_to_num(np.nanstd(whole, axis=0))
    std[std == 0] = 1.0
    assert stats["num_mean"] == mean.tolist() and stats["num_std"] == std.tolist()


@pytest.mark.parametrize("stratify", [True, False])
def test_a_consumed_frame_splits_into_the_same_three_frames(stratify):
    """split_frame(consume=True) splits column by column, dropping each column from the frame (memory: the frame
    and its split are never both whole); the three frames must be those of the ordinary split."""
    frame = synthetic_frame(n=600, seed=4)
    frame["extra"] = np.arange(len(frame))  # a column the recipe does not use
    cfg = synthetic_cfg()
    data = cfg.data.model_copy(update={"split": cfg.data.split.model_copy(update={"stratify": stratify})})
    want = split_frame(frame.copy(), data, "classification")
    got = split_frame(frame, data, "classification", consume=True)
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name))
    # A frame with other columns is split through a selection of the recipe's (it is left whole); a frame of
    # just the recipe's columns, as a snapshot is, gives them up one by one.
    assert list(frame.columns) == ["a", "b", "colour", "noise", "label", "extra"]
    exact = frame[[*data.features, data.target]].copy()
    positions = split_positions(frame[data.target], data, "classification")  # from the target alone, first
    again = split_frame(exact, data, "classification", consume=True, positions=positions)
    assert list(exact.columns) == []
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(want, name))
