"""Monitoring: whylogs profiles behind a small Profiler interface, batch constraints, traffic windows, drift."""

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
