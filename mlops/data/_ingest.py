"""Reading a recipe's data source into a DataFrame, and fingerprinting what was read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from mlops.data._source import make_source
from mlops.recipe.schema import DataConfig


def read_frame(data: DataConfig, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
               write_cache: bool = False) -> pd.DataFrame:
    """The source as a DataFrame, read by its flavor. `cache_dir` keeps slow sources (read-only unless
    `write_cache`)."""
    return make_source(data).read(project, nrows=nrows, cache_dir=cache_dir, write_cache=write_cache)


def check_columns(data: DataConfig, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """Read-only checks run at config load: the data exists and has the named columns.

    Returns (dotted key, message, hint) triples; empty when all is well.
    """
    return make_source(data).check(project, cache_dir)


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the rows and columns used: same data, same fingerprint, whatever the file name."""
    h = hashlib.sha256()
    h.update(repr(list(map(str, frame.columns))).encode())
    h.update(repr([str(t) for t in frame.dtypes]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return "sha256:" + h.hexdigest()
