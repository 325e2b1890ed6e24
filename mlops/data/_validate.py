"""The validate step: columns, types, nulls and row count, all checked, all reported."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mlops.errors import DataError
from mlops.recipe.schema import DataConfig


@dataclass(frozen=True)
class ValidationReport:
    rows: int
    columns: list[str]
    null_fractions: dict[str, float]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, source: str) -> None:
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            raise DataError(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


def validate_frame(frame: pd.DataFrame, data: DataConfig, task: str) -> ValidationReport:
    problems: list[str] = []
    cols = [*data.features, data.target]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        problems.append(f"missing columns: {', '.join(map(repr, missing))}")
    present = [c for c in cols if c in frame.columns]
    nulls = {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in present}

    if len(frame) < data.checks.min_rows:
        problems.append(f"{len(frame)} rows, fewer than data.checks.min_rows={data.checks.min_rows}"
                        + (" (the data has a header and no rows, or is empty)" if not len(frame) else ""))
    if not len(frame):  # no values to check the columns' types or classes on: the row count is the problem
        return ValidationReport(rows=0, columns=[str(c) for c in frame.columns], null_fractions=nulls,
                                problems=problems)
    for c in data.numeric:
        if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c]):
            bad = pd.to_numeric(frame[c], errors="coerce").isna() & frame[c].notna()
            example = frame.loc[bad, c].iloc[0] if bad.any() else frame[c].iloc[0]
            problems.append(f"column {c!r} (data.numeric) is not numeric: {int(bad.sum())} value(s) like {example!r}")
    for c in data.features:
        if c in nulls and nulls[c] > data.checks.max_null_fraction:
            problems.append(f"column {c!r} is {nulls[c]:.1%} null, above "
                            f"data.checks.max_null_fraction={data.checks.max_null_fraction}")
    if data.target in frame.columns:
        if nulls[data.target] > 0:
            problems.append(f"target {data.target!r} has {int(frame[data.target].isna().sum())} null value(s)")
        if task == "classification" and frame[data.target].nunique(dropna=True) < 2:
            problems.append(f"target {data.target!r} has fewer than 2 classes")
        if task == "regression" and not pd.api.types.is_numeric_dtype(frame[data.target]):
            problems.append(f"target {data.target!r} must be numeric for task=regression")
    return ValidationReport(rows=len(frame), columns=[str(c) for c in frame.columns], null_fractions=nulls,
                            problems=problems)
