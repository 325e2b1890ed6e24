"""Served traffic for the monitoring tests: churn rows replayed through a TrafficProfiler on a fake clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops.monitoring import TrafficProfiler
from mlops.recipe.schema import MonitoringConfig


def traffic(churn: pd.DataFrame, n: int, rng: np.random.Generator, scale: float = 1.0) -> pd.DataFrame:
    rows = churn.drop(columns=["churned"]).sample(n, replace=True, random_state=int(rng.integers(1 << 31)))
    rows = rows.reset_index(drop=True)
    rows["monthly_charges"] *= scale
    return rows


def replay(profiler, folder: Path, churn: pd.DataFrame, scale: float, windows_n: int = 3,
           per_window: int = 6000) -> None:
    """Serve `windows_n` minutes of traffic (requests of 100 rows) through a TrafficProfiler at the default rate."""
    now = [0.0]
    tp = TrafficProfiler(profiler, folder, sample_rate=MonitoringConfig().sample_rate, window_s=60, seed=1,
                         clock=lambda: now[0])
    rng = np.random.default_rng(0)
    requests = per_window // 100
    for w in range(windows_n):
        for i in range(requests):
            now[0] = w * 60 + i * 60 / requests
            tp.submit(traffic(churn, 100, rng, scale))
    tp.close()
    assert tp.dropped == 0
