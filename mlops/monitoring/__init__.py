"""Monitoring: whylogs profiles behind a small Profiler interface, batch constraints, traffic windows, drift.

The names below are imported on first use (PEP 562), not with the package: Triton's python backend imports
`mlops.monitoring._capture` in every model version it loads, and importing the profiler (pandas, the recipe
schema, Hydra) with the package made each load seconds slower (bench/README.md, level 4).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops.monitoring._profiler import (
        BatchReport,
        ColumnDrift,
        ConstraintFailure,
        Profiler,
        WhylogsProfiler,
        make_profiler,
    )
    from mlops.monitoring._report import drift_history, render_html
    from mlops.monitoring._traffic import TrafficProfiler, windows

_WHERE = {"BatchReport": "_profiler", "ColumnDrift": "_profiler", "ConstraintFailure": "_profiler",
          "Profiler": "_profiler", "WhylogsProfiler": "_profiler", "make_profiler": "_profiler",
          "drift_history": "_report", "render_html": "_report", "TrafficProfiler": "_traffic", "windows": "_traffic"}

__all__ = sorted([
    "BatchReport",
    "ColumnDrift",
    "ConstraintFailure",
    "Profiler",
    "TrafficProfiler",
    "WhylogsProfiler",
    "drift_history",
    "make_profiler",
    "render_html",
    "windows",
])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"mlops.monitoring.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mlops.monitoring' has no attribute {name!r}")
