"""Reading a data source into a DataFrame, and fingerprinting what was read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from mlops._atomic import atomic_path
from mlops.recipe.schema import DataConfig


def resolve_path(data: DataConfig, project: Path) -> str:
    """A local path relative to the project becomes absolute; URLs (s3://, https://...) pass through."""
    assert data.path is not None
    if "://" in data.path:
        return data.path
    p = Path(data.path).expanduser()
    return str(p if p.is_absolute() else project / p)


def _format(data: DataConfig, url: str) -> str:
    if data.format != "auto":
        return data.format
    return "parquet" if url.lower().endswith((".parquet", ".pq")) else "csv"


def _sklearn_frame(name: str, cache_dir: Path | None, write_cache: bool) -> pd.DataFrame:
    """A bundled scikit-learn dataset. Importing sklearn costs ~2 s, so a copy is kept per sklearn version."""
    from importlib.metadata import version

    cached = cache_dir / f"sklearn-{name}-{version('scikit-learn')}.parquet" if cache_dir else None
    if cached is not None and cached.is_file():
        return pd.read_parquet(cached)
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    if cached is not None and write_cache:
        with atomic_path(cached) as tmp:
            frame.to_parquet(tmp, index=False)
    return frame


def read_frame(data: DataConfig, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
               write_cache: bool = False) -> pd.DataFrame:
    """The source as a DataFrame. `cache_dir` keeps bundled datasets (read-only unless `write_cache`)."""
    if data.source == "sklearn":
        assert data.dataset is not None
        frame = _sklearn_frame(data.dataset, cache_dir, write_cache)
        return frame if nrows is None else frame.head(nrows)
    import fsspec

    url = resolve_path(data, project)
    with fsspec.open(url, "rb") as fh:
        if _format(data, url) == "parquet":
            frame = pd.read_parquet(fh)
            return frame if nrows is None else frame.head(nrows)
        return pd.read_csv(fh, nrows=nrows)


def check_columns(data: DataConfig, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """Read-only checks run at config load: the data exists and has the named columns.

    Returns (dotted key, message, hint) triples; empty when all is well.
    """
    if data.source == "file":
        import fsspec

        url = resolve_path(data, project)
        try:
            fs, path = fsspec.core.url_to_fs(url)
            exists = fs.exists(path)
        except (ImportError, ValueError) as exc:
            return [("data.path", f"cannot open {url!r}: {exc}", "install the fsspec backend for that URL scheme")]
        if not exists:
            return [("data.path", f"file not found: {url}",
                     "paths are relative to the project folder; check the name, or use an fsspec URL")]
    try:
        head = read_frame(data, project, nrows=5, cache_dir=cache_dir)
    except Exception as exc:  # a parser error of any reader: show it, don't crash
        return [("data.path", f"cannot be read as {data.format}: {str(exc).splitlines()[0]}",
                 "check the file format, or set data.format")]
    columns = [str(c) for c in head.columns]
    problems = []
    if data.target not in columns:
        problems.append(("data.target", f"column {data.target!r} is not in the data; its columns are: "
                         f"{', '.join(columns)}", "set data.target to the column you want to predict"))
    for group in ("numeric", "categorical"):
        missing = [c for c in getattr(data, group) if c not in columns]
        if missing:
            problems.append((f"data.{group}", f"columns not in the data: {', '.join(map(repr, missing))}",
                             "column names are case-sensitive; the data has: " + ", ".join(columns)))
    return problems


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the rows and columns used: same data, same fingerprint, whatever the file name."""
    h = hashlib.sha256()
    h.update(repr(list(map(str, frame.columns))).encode())
    h.update(repr([str(t) for t in frame.dtypes]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return "sha256:" + h.hexdigest()
