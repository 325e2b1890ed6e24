"""The profiler interface, and its whylogs flavor.

Everything monitoring does (reference profiles, batch constraints, drift,
windowed traffic profiles) goes through :class:`Profiler`, so a second engine
(e.g. Evidently) is one more flavor registered through the ``mlops.flavors`` entry point::

    profiler = make_profiler("whylogs")
    ref = profiler.profile(train_frame)
    report = profiler.validate(batch_frame, ref, cfg.data, cfg.monitoring)
    scores = profiler.drift(ref, profiler.profile(window_frame), cfg.data.features, cfg.monitoring.drift)

In YAML: ``monitoring: {flavor: whylogs, sample_rate: 0.1}``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlops._atomic import atomic_path
from mlops.features import FLOAT32_MAX
from mlops.recipe.schema import DataConfig, DriftConfig, MonitoringConfig


@dataclass(frozen=True)
class ConstraintFailure:
    column: str
    constraint: str
    details: dict[str, Any]

    def render(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.details.items())
        return f"column {self.column!r}: {self.constraint} ({shown})"


@dataclass(frozen=True)
class BatchReport:
    rows: int
    failures: list[ConstraintFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    score: float | None  # None: the window was too small, or the column is empty
    category: str  # NO_DRIFT | POSSIBLE_DRIFT | DRIFT | NO_VERDICT
    algorithm: str
    reason: str = ""  # why a column got NO_VERDICT when it had rows (non-finite values, a scorer's error)


class Profiler(ABC):
    """A profiling engine: mergeable profiles, constraint checks and drift scores."""

    @abstractmethod
    def profile(self, frame: pd.DataFrame) -> Any: ...

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any: ...

    @abstractmethod
    def rows(self, profile: Any) -> int: ...

    @abstractmethod
    def write(self, profile: Any, path: Path) -> None:
        """Atomically: readers see the old profile or the new one."""

    @abstractmethod
    def read(self, path: Path) -> Any: ...

    def validate(self, frame: pd.DataFrame, reference: Any, data: DataConfig, monitoring: MonitoringConfig
                 ) -> BatchReport:
        """An ingested batch: every feature and the target must be there."""
        return self.validate_profile(self.profile(frame), reference, data, monitoring,
                                     required=[*data.features, data.target])

    @abstractmethod
    def validate_profile(self, profile: Any, reference: Any, data: DataConfig, monitoring: MonitoringConfig,
                         required: list[str]) -> BatchReport:
        """The constraints on a profile (a batch's, or a window of served traffic's); `reference` None (no
        version yet) leaves out what only a reference can say (category sets, non-negativity)."""

    @abstractmethod
    def drift(self, reference: Any, current: Any, columns: list[str], cfg: DriftConfig) -> dict[str, ColumnDrift]: ...

    def columns(self, profile: Any) -> list[str]:
        """The names of the profiled columns."""
        raise NotImplementedError(f"{type(self).__name__} does not list a profile's columns")

    @abstractmethod
    def histogram(self, profile: Any, column: str) -> tuple[list[float], list[float]] | dict[str, float]:
        """Numeric: (bin edges, counts); categorical: {value: count}. For reports."""


class WhylogsProfiler(Profiler):
    """whylogs 1.6.4: profiles are DatasetProfileViews (mergeable, ~kB whatever the row count)."""

    def __init__(self) -> None:
        # whylogs itself is imported by the first method that needs it (4 s here), so building a profiler
        # (and starting the profiling worker beside a model) does not wait for it.
        os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
        # A constant column (an image model's height and width) makes whylogs' Hellinger binning warn on every
        # score that it uses one bucket; the score (0 when both are the same constant) is right, the line is noise.
        logging.getLogger("whylogs.viz.utils.quantile_stats").setLevel(logging.ERROR)

    def profile(self, frame: pd.DataFrame) -> Any:
        from mlops.monitoring._fastlog import log_frame

        with warnings.catch_warnings():
            # ±inf or huge values make whylogs' running variance overflow: the window's constraints report
            # them (see _unusable); numpy's warnings would only be noise on the terminal.
            warnings.simplefilter("ignore", RuntimeWarning)
            return log_frame(frame)  # why.log(frame).view(), ~10x faster (mlops/monitoring/_fastlog.py)

    def merge(self, a: Any, b: Any) -> Any:
        return a.merge(b)

    def rows(self, profile: Any) -> int:
        cols = profile.get_columns()
        if not cols:
            return 0
        first = next(iter(cols.values()))
        return int(first.get_metric("counts").n.value)

    def columns(self, profile: Any) -> list[str]:
        return [str(c) for c in profile.get_columns()]

    def write(self, profile: Any, path: Path) -> None:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            # whylogs asks for its Writer API, which picks its own file names; we need this exact path.
            warnings.filterwarnings("ignore", message="please use a Writer", category=DeprecationWarning)
            profile.write(str(tmp))

    def read(self, path: Path) -> Any:
        from whylogs.core import DatasetProfileView

        return DatasetProfileView.read(str(path))

    def validate_profile(self, profile: Any, reference: Any, data: DataConfig, monitoring: MonitoringConfig,
                         required: list[str]) -> BatchReport:
        from whylogs.core.constraints import ConstraintsBuilder
        from whylogs.core.constraints import factories as f

        builder = ConstraintsBuilder(dataset_profile_view=profile)
        present = set(map(str, profile.get_columns()))
        failures = [ConstraintFailure(c, "column is missing", {"columns": sorted(present)})
                    for c in required if c not in present]
        ref_cols = reference.get_columns() if reference is not None else {}
        for c in data.numeric:
            if c not in present:
                continue
            builder.add_constraint(f.column_has_zero_count_types(c, ["string", "object"]))
            lo_hi = monitoring.bounds.get(c)
            if lo_hi is not None:
                builder.add_constraint(f.is_in_range(c, lo_hi[0], lo_hi[1]))
            elif c in ref_cols and (ref_min := _summary(ref_cols[c]).get("distribution/min")) is not None \
                    and ref_min >= 0:
                builder.add_constraint(f.is_non_negative(c))
        cols = profile.get_columns()
        for c in data.numeric:
            # Its own signal, before whylogs' constraints: ±inf and values beyond float32 are garbage to the
            # model, and whylogs' range statistics cannot even be computed over them.
            if c in present and (bad := _unusable(_summary(cols[c]))):
                failures.append(ConstraintFailure(c, "non-finite or out-of-float32-range values", bad))
        for c in data.features:
            if c in present:
                builder.add_constraint(f.null_percentage_below_number(c, data.checks.max_null_fraction))
        if not monitoring.allow_new_categories:
            for c in data.categorical:
                if c in present and c in ref_cols:
                    known = {item.value for item in ref_cols[c].get_metric("frequent_items").strings}
                    if known:  # an empty reference (no version yet) knows no categories: nothing to compare
                        builder.add_constraint(f.frequent_strings_in_reference_set(c, known))
        constraints = builder.build()
        # A tensor model's window has none of the recipe's columns: no constraint to report on (whylogs would warn).
        checked = constraints.column_constraints or constraints.dataset_constraints
        for r in constraints.generate_constraints_report(with_summary=True) if checked else []:
            if r.failed:
                column = _column_of(r.name, present)
                details = {k: v for k, v in (r.summary or {}).items() if k != "metric" and v not in (0, None)}
                failures.append(ConstraintFailure(column, r.name, details))
        return BatchReport(rows=self.rows(profile), failures=failures)

    def drift(self, reference: Any, current: Any, columns: list[str], cfg: DriftConfig) -> dict[str, ColumnDrift]:
        from whylogs.viz.drift.column_drift_algorithms import Hellinger

        out: dict[str, ColumnDrift] = {}
        if self.rows(current) < cfg.min_window_rows:
            return {c: ColumnDrift(c, None, "NO_VERDICT", cfg.algorithm) for c in columns}
        ref_cols, cur_cols = reference.get_columns(), current.get_columns()
        for c in columns:
            # One column at a time: a column that cannot be scored gets no verdict and a reason; the rest score.
            reason, score = "", None
            summaries = [_summary(v[c]) for v in (ref_cols, cur_cols) if c in v]
            if any(_unusable(s) for s in summaries):
                reason = "non-finite or out-of-float32-range values: not scored (the window fails its constraints)"
            elif c in cur_cols and c in ref_cols and summaries[-1].get("distribution/n"):
                try:
                    found = Hellinger().calculate(reference_column_view=ref_cols[c],
                                                  target_column_view=cur_cols[c], with_thresholds=False)
                    score = None if found is None else found.statistic
                except (ArithmeticError, ValueError) as exc:  # whylogs' binning over extreme ranges
                    reason = f"not scored: {type(exc).__name__}: {exc}"
            elif c in cur_cols and c in ref_cols:
                score = _categorical_hellinger(ref_cols[c], cur_cols[c])
            if score is not None and not math.isfinite(score):
                score, reason = None, "not scored: the distance is not a finite number"
            out[c] = ColumnDrift(c, None if score is None else float(score), _category(score, cfg), cfg.algorithm,
                                 reason)
        return out

    def histogram(self, profile: Any, column: str) -> tuple[list[float], list[float]] | dict[str, float]:
        col = profile.get_column(column)
        dist = col.get_metric("distribution")
        if dist is not None and dist.n:
            kll = dist.kll.value
            lo, hi = kll.get_min_value(), kll.get_max_value()
            edges = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else [lo, lo + 1]
            pmf = kll.get_pmf(edges[1:-1]) if len(edges) > 2 else [1.0]
            return edges, [float(p) for p in pmf]
        return {item.value: float(item.est) for item in col.get_metric("frequent_items").strings}


def _summary(column_view: Any) -> dict[str, Any]:
    return column_view.to_summary_dict()


def _unusable(summary: dict[str, Any]) -> dict[str, Any]:
    """What a column's profile says about values a float32 model cannot use; empty if none."""
    inf = int(summary.get("counts/inf") or 0)
    lo, hi = summary.get("distribution/min"), summary.get("distribution/max")
    beyond = [v for v in (lo, hi) if v is not None and not math.isnan(v) and abs(v) > FLOAT32_MAX]
    if not inf and not beyond:
        return {}
    # As text when not finite: the details go into strict-JSON reports.
    return {"inf_count": inf, "min": lo if lo is None or math.isfinite(lo) else str(lo),
            "max": hi if hi is None or math.isfinite(hi) else str(hi), "float32_max": FLOAT32_MAX}


def _column_of(constraint_name: str, columns: set[str]) -> str:
    # whylogs names constraints after their column ("null percentage of X lower than ..."): recover it.
    return max((c for c in columns if c in constraint_name), key=len, default="")


def _categorical_hellinger(ref_col: Any, cur_col: Any) -> float | None:
    # whylogs 1.6.4 scores categoricals only with chi-square p-values, which flag any difference on large
    # windows; the Hellinger distance over the frequent-items estimates is on the same scale as the numeric one.
    ref = {i.value: i.est for i in ref_col.get_metric("frequent_items").strings}
    cur = {i.value: i.est for i in cur_col.get_metric("frequent_items").strings}
    rt, ct = sum(ref.values()), sum(cur.values())
    if not rt or not ct:
        return None
    keys = set(ref) | set(cur)
    bc = sum(math.sqrt(ref.get(k, 0) / rt * cur.get(k, 0) / ct) for k in keys)
    return math.sqrt(max(0.0, 1 - bc))


def _category(score: float | None, cfg: DriftConfig) -> str:
    if score is None:
        return "NO_VERDICT"
    return "DRIFT" if score >= cfg.drift else "POSSIBLE_DRIFT" if score >= cfg.possible else "NO_DRIFT"


def no_profiler() -> None:
    """`monitoring: {flavor: none}`: nothing profiles."""
    return None


def make_profiler(flavor: str) -> Profiler:
    """The profiler of the monitor flavor `flavor` (mlops.flavors), constructed with no arguments."""
    from mlops.flavors import get

    profiler = get("monitor", flavor).load()()
    if profiler is None:
        raise ValueError(f"monitoring flavor {flavor!r} has no profiler")
    return profiler
