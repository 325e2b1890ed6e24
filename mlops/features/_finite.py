"""Finite by construction: which cells a float32 model cannot compute with, and what a recipe may do about them.

The model computes in float32 (training, ONNX and Triton's FP32 inputs), so a value is unusable if it is ±inf
or if its float32 cast overflows (|x| > 3.4028235e38, e.g. -1e308). NaN is not counted here: it is a missing
value, which the null checks govern and the model imputes. The data gate, the client and the served model all
ask this module, so "out of range" means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FLOAT32_MAX = float(np.finfo(np.float32).max)
EXAMPLES = 3  # rows named per column in a message: enough to find them, short enough to read


@dataclass(frozen=True)
class BadValues:
    """The unusable cells of one column: how many, and the first few (row label, value)."""

    column: str
    count: int
    examples: list[tuple[object, float]] = field(default_factory=list)

    @property
    def rows(self) -> list[object]:
        return [r for r, _v in self.examples]

    def render(self) -> str:
        shown = ", ".join(f"row {r}: {v!r}" for r, v in self.examples)
        more = ", ..." if self.count > len(self.examples) else ""
        return (f"column {self.column!r} has {self.count} non-finite or out-of-float32-range value(s) "
                f"({shown}{more}); the model computes in float32, |x| <= {FLOAT32_MAX:.7g}")

    def to_dict(self) -> dict[str, object]:
        return {"column": self.column, "count": self.count,
                "rows": [r if isinstance(r, int | str) else str(r) for r in self.rows],
                "values": [repr(v) for _r, v in self.examples]}


def unusable(values: np.ndarray) -> np.ndarray:
    """Mask of ±inf and values whose float32 cast overflows; NaN (missing) is not unusable."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.asarray(values, dtype=np.float64)
        return np.isinf(v) | (np.abs(v) > FLOAT32_MAX)


def _as_float(series: pd.Series) -> np.ndarray:
    # Non-numeric cells are the type check's business, not this one's: they become NaN here.
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def bad_values(frame: pd.DataFrame, columns: list[str]) -> list[BadValues]:
    """Per column of `columns` present in `frame` (numeric ones; others are skipped), the unusable cells."""
    found = []
    for c in columns:
        if c not in frame.columns:
            continue
        series = frame[c]
        if not (pd.api.types.is_numeric_dtype(series) or series.dtype == object):
            continue
        mask = unusable(_as_float(series))
        if mask.any():
            idx = np.flatnonzero(mask)
            examples = [(_label(frame.index[i]), float(_as_float(series.iloc[[i]])[0])) for i in idx[:EXAMPLES]]
            found.append(BadValues(str(c), int(mask.sum()), examples))
    return found


def _label(label: object) -> object:
    return label.item() if isinstance(label, np.generic) else label


def repair(frame: pd.DataFrame, columns: list[str], policy: str) -> tuple[pd.DataFrame, list[BadValues]]:
    """Apply `data.checks.non_finite` to the unusable cells of `columns`: `reject` changes nothing, `drop` drops
    their rows, `clip` replaces each with its column's finite extreme on that side (the largest or smallest
    usable value seen; 0 if a column has none). Returns the frame and what was found."""
    bad = bad_values(frame, columns)
    if not bad or policy == "reject":
        return frame, bad
    if policy == "drop":
        keep = np.ones(len(frame), dtype=bool)
        for b in bad:
            keep &= ~unusable(_as_float(frame[b.column]))
        return frame.loc[keep].reset_index(drop=True), bad
    if policy != "clip":
        raise ValueError(f"unknown non-finite policy {policy!r}")
    out = frame.copy()
    for b in bad:
        v = _as_float(out[b.column])
        mask = unusable(v)
        usable = v[~mask & ~np.isnan(v)]
        lo, hi = (float(usable.min()), float(usable.max())) if usable.size else (0.0, 0.0)
        v = v.copy()
        v[mask & (v > 0)] = hi
        v[mask & (v < 0)] = lo
        out[b.column] = v
    return out, bad
