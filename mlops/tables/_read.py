"""The one reader of data sources: `mlops.data.read_frame` and the config-load data probe both go through it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import pandas as pd


class TableSource(Protocol):
    """Where the rows are: `mlops.recipe.schema.DataConfig` has these fields (`data.source`, `data.path`, ...)."""

    @property
    def source(self) -> Literal["sklearn", "file"]: ...
    @property
    def dataset(self) -> str | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def format(self) -> Literal["auto", "csv", "parquet"]: ...


def resolve_path(data: TableSource, project: Path) -> str:
    """A local path relative to the project becomes absolute; URLs (s3://, https://...) pass through."""
    assert data.path is not None
    if "://" in data.path:
        return data.path
    p = Path(data.path).expanduser()
    return str(p if p.is_absolute() else project / p)


def _format(data: TableSource, url: str) -> str:
    if data.format != "auto":
        return data.format
    return "parquet" if url.lower().endswith((".parquet", ".pq")) else "csv"


def _sklearn_frame(name: str, cache_dir: Path | None, save: Callable[[Path, bytes], None] | None) -> pd.DataFrame:
    """A bundled scikit-learn dataset. Importing sklearn costs ~2 s, so a copy is kept per sklearn version."""
    from importlib.metadata import version

    cached = cache_dir / f"sklearn-{name}-{version('scikit-learn')}.parquet" if cache_dir else None
    if cached is not None and cached.is_file():
        return pd.read_parquet(cached)
    # heavy: scikit-learn (with scipy) only when the cache misses.
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    if cached is not None and save is not None:
        import io

        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        save(cached, buf.getvalue())
    return frame


def read_table(data: TableSource, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
               save: Callable[[Path, bytes], None] | None = None) -> pd.DataFrame:
    """The source as a DataFrame. `cache_dir` keeps bundled datasets; `save(path, bytes)` writes a missing copy
    there (None: read-only), so this module writes nothing itself."""
    if data.source == "sklearn":
        assert data.dataset is not None
        frame = _sklearn_frame(data.dataset, cache_dir, save)
        return frame if nrows is None else frame.head(nrows)
    import fsspec

    url = resolve_path(data, project)
    with fsspec.open(url, "rb") as fh:
        if _format(data, url) == "parquet":
            frame = pd.read_parquet(fh)
            return frame if nrows is None else frame.head(nrows)
        return pd.read_csv(fh, nrows=nrows)
