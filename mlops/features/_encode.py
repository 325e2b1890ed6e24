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
    values = frame[columns].to_numpy(dtype=object)
    return np.array([_as_string(v) for v in values.ravel()], dtype=object).reshape(len(frame), len(columns))


def numeric_array(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The numeric columns as float32 ``[N, len(columns)]``; missing values become NaN (the model imputes them)."""
    try:
        return frame[columns].to_numpy(dtype=np.float32, na_value=np.nan).reshape(len(frame), len(columns))
    except (TypeError, ValueError) as e:
        raise PredictError(
            f"the numeric columns {columns} hold values that are not numbers ({e}); send numbers, or null for "
            "a missing value."
        ) from e
