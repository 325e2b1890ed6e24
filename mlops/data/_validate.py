"""The validate step: columns, types, nulls and row count, all checked, all reported."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mlops.data._images import check_images
from mlops.errors import DataError
from mlops.features import BadValues, bad_values, repair
from mlops.recipe.schema import DataConfig, ImageData


@dataclass(frozen=True)
class ValidationReport:
    rows: int
    columns: list[str]
    null_fractions: dict[str, float]
    problems: list[str] = field(default_factory=list)
    non_finite: list[BadValues] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)  # an image source's: each bad file, what is wrong

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, source: str) -> None:
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            raise DataError(f"{len(self.problems)} problem(s) in {source}:\n{lines}")


def validate_frame(frame: pd.DataFrame, data: DataConfig, task: str, delta: bool = False) -> ValidationReport:
    """Every problem of `frame` against the recipe's checks. `delta`: the new rows of an incremental ingest, which
    join earlier snapshots in training, so the row count and the number of classes are the window's to meet."""
    problems: list[str] = []
    cols = [*data.features, data.target]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        problems.append(f"missing columns: {', '.join(map(repr, missing))}")
    present = [c for c in cols if c in frame.columns]
    nulls = {c: float(frame[c].isna().mean()) if len(frame) else 0.0 for c in present}

    if len(frame) < data.checks.min_rows and not delta:
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
        if task == "classification" and frame[data.target].nunique(dropna=True) < 2 and not delta:
            problems.append(f"target {data.target!r} has fewer than 2 classes")
        if task == "regression" and not pd.api.types.is_numeric_dtype(frame[data.target]):
            bad = pd.to_numeric(frame[data.target], errors="coerce").isna() & frame[data.target].notna()
            example = f": {int(bad.sum())} value(s) like {frame.loc[bad, data.target].iloc[0]!r}" if bad.any() else ""
            problems.append(f"target {data.target!r} must be numeric for task=regression{example}")
    bad_files: dict[str, str] = {}
    if isinstance(data, ImageData):  # every file decoded and held to data.image, named when it fails
        found, bad_files = check_images(frame, data.image)
        problems += found
    unusable = bad_values(frame, finite_columns(data, task))
    problems += [f"{b.render()} <data.checks.non_finite={data.checks.non_finite}>; set it to `drop` or `clip` to "
                 "repair such rows explicitly" for b in unusable]
    return ValidationReport(rows=len(frame), columns=[str(c) for c in frame.columns], null_fractions=nulls,
                            problems=problems, non_finite=unusable, bad_files=bad_files)


def finite_columns(data: DataConfig, task: str) -> list[str]:
    """The columns the model computes with as floats: the numeric features, and a regression target."""
    return [*data.numeric, *([data.target] if task == "regression" else [])]


def repair_frame(frame: pd.DataFrame, data: DataConfig, task: str) -> tuple[pd.DataFrame, dict[str, object]]:
    """`data.checks.non_finite` applied before anything trains on `frame`: (the frame, what was done). With
    `reject` (the default) nothing changes and the validate step reports the values instead."""
    policy = data.checks.non_finite
    fixed, found = repair(frame, finite_columns(data, task), policy)
    if not found or policy == "reject":
        return frame, {}
    return fixed, {"policy": policy, "rows_before": len(frame), "rows_after": len(fixed),
                   "columns": [b.to_dict() for b in found]}
