"""Deterministic synthetic tabular data for bench/scale.py: 10 numeric + 2 categorical columns, a binary target.

Written in chunks of 1M rows straight to one Parquet file (row groups of 1M), so generating 10M rows never holds
more than one chunk in memory. The same `rows` and seed give the same file (same bytes: fixed writer options).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMERIC = [f"x{i}" for i in range(10)]
CATEGORICAL = ["plan", "region"]
TARGET = "label"
PLANS = np.array(["basic", "plus", "pro", "team", "enterprise"])
REGIONS = np.array([f"r{i:02d}" for i in range(20)])
CHUNK = 1_000_000
SEED = 20261129


def _chunk(rng: np.random.Generator, n: int) -> pa.Table:
    x = rng.standard_normal((n, len(NUMERIC))).astype(np.float64)
    x[:, 3] = np.abs(x[:, 3]) * 40  # a non-negative, skewed column (like an amount)
    x[:, 7] = np.round(rng.exponential(2.0, n))  # integer-valued counts
    plan = rng.integers(0, len(PLANS), n)
    region = rng.integers(0, len(REGIONS), n)
    logit = 0.9 * x[:, 0] - 0.6 * x[:, 1] + 0.02 * x[:, 3] - 0.8 + 0.35 * plan - 0.05 * region \
        + 0.5 * x[:, 2] * x[:, 4]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    missing = rng.random(n) < 0.01  # 1% nulls in one numeric column: the imputation path runs too
    x[missing, 5] = np.nan
    cols = {c: x[:, i] for i, c in enumerate(NUMERIC)}
    cols["plan"] = PLANS[plan]
    cols["region"] = REGIONS[region]
    cols[TARGET] = y
    return pa.table(cols)


def make(rows: int, folder: Path) -> Path:
    """`folder/scale-<rows>.parquet`, generated once (cached; written to a temp name, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scale-{rows}.parquet"
    if path.is_file():
        return path
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(SEED)
    writer = None
    try:
        done = 0
        while done < rows:
            table = _chunk(rng, min(CHUNK, rows - done))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=CHUNK)
            done += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return path


def arrow_bytes(path: Path, columns: list[str] | None = None) -> int:
    """The data's size as an Arrow table in memory (the columns the recipe uses)."""
    return pq.read_table(path, columns=columns).nbytes
