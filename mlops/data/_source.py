"""The data-source interface, and its built-in flavors `sklearn` and `file`.

A data source turns its config section into rows. The framework fingerprints, validates, snapshots and splits
what it returns; the source only reads.

Python (the team's package registers it through the `mlops.flavors` entry point; see docs/extending.md)::

    class JsonlData(DataConfig):                       # mlops.recipe.schema.DataConfig
        source: Literal["jsonl"] = "jsonl"
        path: str

    class JsonlSource(DataSource):
        def read(self, project, *, nrows=None, cache_dir=None, write_cache=False):
            return pd.read_json(project / self.config.path, lines=True, nrows=nrows)

YAML::

    data:
      source: jsonl
      path: data/rows.jsonl
      target: churned
      numeric: [tenure_months]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from mlops.recipe.schema import DataConfig


class DataSource(ABC):
    """Reads the rows a recipe's `data:` section names. Constructed with that section (its flavor's config)."""

    def __init__(self, config: DataConfig):
        self.config = config

    @abstractmethod
    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        """The rows as a DataFrame (the first `nrows` if given). Relative paths are relative to `project`;
        `cache_dir` may keep a local copy of a slow source (written only with `write_cache`)."""

    def read_after(self, project: Path, column: str, after: Any) -> pd.DataFrame:
        """`data.incremental`: the rows whose `column` is above `after` (all rows when `after` is None). The
        default reads everything and filters; a source that can pushes the condition down (SQL WHERE, Arrow
        filter) so only the new rows are read."""
        frame = self.read(project)
        return frame if after is None else frame[frame[column] > after].reset_index(drop=True)

    def check(self, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
        """Read-only checks at config load: (dotted key, message, hint) for each problem; the default reads a
        few rows and checks that the recipe's columns are there. Override to check reachability first."""
        try:
            head = self.read(project, nrows=5, cache_dir=cache_dir)
        except Exception as exc:  # any reader's error is a config problem to show, not a crash
            return [("data.source", f"cannot be read: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                     "check the source's settings")]
        return missing_columns(self.config, [str(c) for c in head.columns])

    def check_window(self, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
        """Run at config load after `check` passed: `data.window.days` counts days of the incremental column,
        which must hold timestamps (ISO text in a CSV)."""
        import pandas as pd

        data = self.config
        if data.incremental is None or data.window is None or data.window.days is None:
            return []
        column = self.read(project, nrows=5, cache_dir=cache_dir)[data.incremental.column]
        if pd.api.types.is_datetime64_any_dtype(column):
            return []
        if column.dtype == object:
            try:
                pd.to_datetime(column, format="ISO8601")
                return []
            except (ValueError, TypeError):
                pass
        like = f" like {column.iloc[0]!r}" if len(column) else ""
        return [("data.window.days", f"counts days of data.incremental.column={data.incremental.column!r}, which "
                 f"holds {column.dtype} values{like}, not timestamps",
                 "use data.window.rows for a numeric column, or an updated_at timestamp column")]

    def describe(self) -> str:
        return self.config.describe()


def missing_columns(data: DataConfig, columns: list[str]) -> list[tuple[str, str, str]]:
    problems = []
    if data.target not in columns:
        problems.append(("data.target", f"column {data.target!r} is not in the data; its columns are: "
                         f"{', '.join(columns)}", "set data.target to the column you want to predict"))
    for group in ("numeric", "categorical"):
        missing = [c for c in getattr(data, group) if c not in columns]
        if missing:
            problems.append((f"data.{group}", f"columns not in the data: {', '.join(map(repr, missing))}",
                             "column names are case-sensitive; the data has: " + ", ".join(columns)))
    if data.incremental is not None and data.incremental.column not in columns:
        problems.append(("data.incremental.column", f"column {data.incremental.column!r} is not in the data; its "
                         f"columns are: {', '.join(columns)}", "name a column that grows with every new row, "
                         "e.g. an updated_at timestamp (select it in data.query for a sql source)"))
    return problems


def resolve(path: str, project: Path) -> str:
    """A local path relative to the project becomes absolute; URLs (s3://, https://...) pass through."""
    if "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else project / p)


class SklearnSource(DataSource):
    """`source: sklearn`: a dataset bundled with scikit-learn."""

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        frame = _sklearn_frame(self.config.dataset, cache_dir, write_cache)  # type: ignore[attr-defined]
        return frame if nrows is None else frame.head(nrows)


def _sklearn_frame(name: str, cache_dir: Path | None, write_cache: bool) -> pd.DataFrame:
    """A bundled scikit-learn dataset. Importing sklearn costs ~2 s, so a copy is kept per sklearn version."""
    from importlib.metadata import version

    import pandas as pd

    cached = cache_dir / f"sklearn-{name}-{version('scikit-learn')}.parquet" if cache_dir else None
    if cached is not None and cached.is_file():
        return pd.read_parquet(cached)
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    if cached is not None and write_cache:
        from mlops._atomic import atomic_path

        with atomic_path(cached) as tmp:
            frame.to_parquet(tmp, index=False)
    return frame


class FileSource(DataSource):
    """`source: file`: one CSV or Parquet file, local or at any fsspec URL."""

    def url(self, project: Path) -> str:
        return resolve(str(self.config.path), project)  # type: ignore[attr-defined]

    def _format(self, url: str) -> str:
        fmt: str = self.config.format  # type: ignore[attr-defined]
        if fmt != "auto":
            return fmt
        return "parquet" if url.lower().endswith((".parquet", ".pq")) else "csv"

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        import fsspec
        import pandas as pd

        url = self.url(project)
        with fsspec.open(url, "rb") as fh:
            if self._format(url) == "parquet":
                if nrows is None:
                    return parquet_frame(fh)
                return _parquet_head(fh, nrows)  # the config-load check reads 5 rows, not the whole file
            try:
                return pd.read_csv(fh, nrows=nrows)
            except pd.errors.EmptyDataError:
                # An empty file holds no rows: the data gate says so with the numbers (exit 3), not a parser.
                return pd.DataFrame(columns=[*self.config.features, self.config.target])

    def read_after(self, project: Path, column: str, after: Any) -> pd.DataFrame:
        import fsspec
        import pandas as pd

        url = self.url(project)
        if self._format(url) != "parquet":
            frame = self.read(project)
            if frame[column].dtype == object:  # CSV has no types: ISO dates compare as timestamps, not as text
                try:
                    frame[column] = pd.to_datetime(frame[column], format="ISO8601")
                except (ValueError, TypeError):
                    pass  # not dates: compared as text
            return frame if after is None else frame[frame[column] > after].reset_index(drop=True)
        if after is None:
            return self.read(project)
        with fsspec.open(url, "rb") as fh:  # Parquet: row groups below the watermark are skipped by their stats
            return pd.read_parquet(fh, filters=[(column, ">", after)]).reset_index(drop=True)

    def check(self, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
        import fsspec

        url = self.url(project)
        try:
            fs, path = fsspec.core.url_to_fs(url)
            exists = fs.exists(path)
        except (ImportError, ValueError) as exc:
            return [("data.path", f"cannot open {url!r}: {exc}", "install the fsspec backend for that URL scheme")]
        if not exists:
            return [("data.path", f"file not found: {url}",
                     "paths are relative to the project folder; check the name, or use an fsspec URL")]
        try:
            head = self.read(project, nrows=5, cache_dir=cache_dir)
        except Exception as exc:  # a parser error of any reader: show it, don't crash
            return [("data.path", f"cannot be read as {self.config.format}: {str(exc).splitlines()[0]}",  # type: ignore[attr-defined]
                     "check the file format, or set data.format")]
        return missing_columns(self.config, [str(c) for c in head.columns])


def parquet_frame(where: Any, columns: list[str] | None = None) -> pd.DataFrame:
    """A whole Parquet file (a path or an open file) as the DataFrame `pd.read_parquet` gives, at about half its
    memory peak: decoded one column at a time, and each column's Arrow buffers freed as soon as it is converted
    (`split_blocks`, `self_destruct`). bench/README.md, "bench: scale": 10M rows peaked at 1.3 GB over the
    1.05 GB frame, against 2.3 GB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The system allocator, not Arrow's default pool (mimalloc), which keeps what is freed for its next allocation:
    # the frame's numeric columns are these very buffers, and whoever frees them (a split dropping each column it
    # has copied) should give the memory back (bench/README.md, "bench: scale": 0.8 GB less at 10M rows).
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        pf = pq.ParquetFile(where)
        schema = pf.schema_arrow
        if columns is not None:  # those of them the file has, and the index pandas stored as columns
            index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
            schema = pa.schema([f for f in schema if f.name in columns or f.name in index], metadata=schema.metadata)
        table = pa.Table.from_arrays([pf.read(columns=[name]).column(0) for name in schema.names], schema=schema)
        return table.to_pandas(split_blocks=True, self_destruct=True)
    finally:
        pa.set_memory_pool(previous)


def _parquet_head(fh: Any, nrows: int) -> pd.DataFrame:
    """The first `nrows` rows of a Parquet file, reading only the row groups they are in."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fh)
    batch = next(pf.iter_batches(batch_size=nrows), None)
    return (pf.schema_arrow.empty_table() if batch is None else batch).to_pandas()


def make_source(config: DataConfig) -> DataSource:
    """The data source of `config.source`, from the flavor registry."""
    from mlops.flavors import get

    impl: Any = get("data_source", config.source).load()
    return impl(config)
