"""Raw values -> model inputs: numeric columns as float32 (NaN kept), categorical columns as strings ("" missing).

Training fits its vocabularies on these strings, and the ONNX graph's LabelEncoder looks them up, so the torch
and ONNX paths agree only because both encode through here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mlops.errors import PredictError


def _as_string(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    # A NaN turns an int column into floats; 3.0 must still read as the "3" seen in training.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def categorical_strings(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The categorical columns as an object array of ``str`` ``[N, len(columns)]``; missing values become ""."""
    out = np.empty((len(frame), len(columns)), dtype=object)
    for j, c in enumerate(columns):
        out[:, j] = _column_strings(frame[c])
    return out


def _column_strings(series: pd.Series) -> np.ndarray:
    codes, names = string_codes(series)
    return names[codes]


def string_codes(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, names)`` with ``names[codes]`` the column's strings as `categorical_strings` gives them: a
    caller that maps each distinct string (a vocabulary lookup) needs no object array of the whole column."""
    # Each distinct value is converted once (a category column has few; 10M rows in ~1 s instead of ~20 s). Only
    # where hashing cannot merge values that _as_string tells apart (True and 1 are one dict key, "True" and "1"
    # as strings): columns of one numpy dtype or of strings. Mixed object columns go value by value.
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) not in ("string", "empty"):
        return pd.factorize(np.array([_as_string(v) for v in series.to_numpy(dtype=object)], dtype=object))
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    names = np.array([*(_as_string(u) for u in uniques), ""], dtype=object)  # code -1 (missing) is the last: ""
    return codes, names


def numeric_array(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The numeric columns as float32 ``[N, len(columns)]``; missing values become NaN (the model imputes them)."""
    try:
        # Column by column into the float32 result: `frame[columns]` first would copy every column as it is (a
        # float64 copy of the whole training split, 0.5 GB at 7M rows, bench/README.md "bench: scale").
        out = np.empty((len(frame), len(columns)), dtype=np.float32)
        for j, c in enumerate(columns):
            out[:, j] = frame[c].to_numpy(dtype=np.float32, na_value=np.nan)
        return out
    except (TypeError, ValueError) as e:
        raise PredictError(
            f"the numeric columns {columns} hold values that are not numbers ({e}); send numbers, or null for "
            "a missing value."
        ) from e
