"""The seeded train/val/test split: the only place rows are assigned to a role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mlops.errors import DataError
from mlops.recipe.schema import DataConfig


@dataclass(frozen=True)
class Split:
    """Three disjoint frames holding the feature columns and the target, with the source index kept."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    # The fit may empty `train` column by column as it encodes it (the tabular module's data module does): set by
    # a caller that needs nothing more of those rows (the train step, which profiles them first).
    consume_train: bool = False


Positions = tuple[np.ndarray, np.ndarray, np.ndarray]


def split_positions(target: pd.Series, data: DataConfig, task: str) -> Positions:
    """The (train, val, test) row positions ``split_frame`` takes, from the target column alone: the shuffle
    depends only on the row count, the seed and (stratified) the labels. A caller that reads the target first
    can split a frame it has not read yet; a target with missing values is split_frame's DataError."""
    cfg = data.split
    stratify = task == "classification" and cfg.stratify
    labels = target.to_numpy() if stratify else None
    try:
        rest, test = train_test_split(
            np.arange(len(target)), test_size=cfg.test, random_state=cfg.seed, stratify=labels
        )
        # The val fraction is of the whole frame, so rescale it to what remains after the test rows left.
        train, val = train_test_split(
            rest,
            test_size=cfg.val / (1.0 - cfg.test),
            random_state=cfg.seed,
            stratify=labels[rest] if stratify else None,
        )
    except ValueError as e:
        hint = " or set `data.split.stratify=false`" if stratify else ""
        raise DataError(
            f"cannot split {len(target)} rows with `data.split.val={cfg.val}` and `data.split.test={cfg.test}`: {e}. "
            f"Provide more rows{hint}."
        ) from e
    return train, val, test


def split_frame(frame: pd.DataFrame, data: DataConfig, task: str, consume: bool = False,
                positions: Positions | None = None) -> Split:
    """Split ``frame`` by ``data.split``: the same frame and seed always give the same three frames.

    ``consume``: the caller's ``frame`` is not needed afterwards; its columns are split one at a time and dropped
    from it, so the frame and its split are not both in memory whole (the same three frames; ``frame`` is left
    without those columns). ``positions``: what ``split_positions`` gave for this frame's target column."""
    columns = [*data.features, data.target]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"the data has no column(s) {missing} named under `data.numeric`, `data.categorical` or `data.target`; "
            f"it has {list(frame.columns)}. Fix the column names in the recipe or the data."
        )
    if list(frame.columns) != columns:  # ingest already kept just these, in this order: no copy of the whole frame
        frame = frame[columns]
    if frame[data.target].isna().any():
        n = int(frame[data.target].isna().sum())
        raise DataError(
            f"{n} row(s) have no value in the target column `data.target={data.target}`; a row without a target "
            "can be neither trained on nor scored. Drop or fill them before training."
        )
    # Positions are split, not the frame: the same rows in the same order as splitting the frame itself, and each
    # row is copied once, into its split.
    train, val, test = positions if positions is not None else split_positions(frame[data.target], data, task)
    if not consume:
        return Split(train=frame.take(train), val=frame.take(val), test=frame.take(test))
    rows = (train, val, test)
    parts: tuple[dict[str, Any], ...] = ({}, {}, {})
    for c in columns:
        column = frame.pop(c).array  # the values only: one index per split below, not one per column
        for part, at in zip(parts, rows, strict=True):
            part[c] = column.take(at)
        del column
    # copy=False: each column stays its own block (no consolidated copy of the split).
    return Split(*(pd.DataFrame(part, index=frame.index.take(at), copy=False) for part, at in zip(parts, rows, strict=True)))
