"""Reading a data source into a DataFrame, and fingerprinting what was read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from mlops.recipe.schema import DataConfig
from mlops.registry import write_atomic
from mlops.tables import read_table


def read_frame(data: DataConfig, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
               write_cache: bool = False) -> pd.DataFrame:
    """The source as a DataFrame. `cache_dir` keeps bundled datasets (read-only unless `write_cache`)."""
    return read_table(data, project, nrows=nrows, cache_dir=cache_dir, save=write_atomic if write_cache else None)


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the rows and columns used: same data, same fingerprint, whatever the file name."""
    h = hashlib.sha256()
    h.update(repr(list(map(str, frame.columns))).encode())
    h.update(repr([str(t) for t in frame.dtypes]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return "sha256:" + h.hexdigest()
