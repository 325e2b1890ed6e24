"""`source: parquet_dataset`: a folder (or a file-name prefix) of Parquet files, read with Arrow.

YAML::

    data:
      source: parquet_dataset
      path: data/events              # or s3://bucket/events/, gs://..., or a prefix: data/events/part-
      target: churned
      numeric: [tenure_months]
      categorical: [region]          # a hive partition folder (region=west/) is a column like any other

Hive partition folders (`year=2024/month=01/part-0.parquet`) become columns, typed by Arrow's inference (`01` is
the integer 1). Files whose names start with `_` or `.` (`_SUCCESS`, `.crc`) are skipped, as Spark and Arrow do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.data._source import DataSource, missing_columns, resolve

if TYPE_CHECKING:
    import pandas as pd


class NoParquetFiles(Exception):
    """The path names no folder or prefix with Parquet files; the message says which."""


class ParquetDatasetSource(DataSource):
    """Reads every Parquet file under `data.path` as one table (see the module docstring for the YAML)."""

    def url(self, project: Path) -> str:
        return resolve(str(self.config.path), project)  # type: ignore[attr-defined]

    def dataset(self, project: Path) -> Any:
        """The `pyarrow.dataset.Dataset` of the path: a folder, or the files whose names start with it."""
        import fsspec
        import pyarrow.dataset as ds
        from fsspec.implementations.local import LocalFileSystem

        url = self.url(project)
        fs, path = fsspec.core.url_to_fs(url)
        # Arrow's own local filesystem is faster than going through fsspec; remote stores go through fsspec.
        arrow_fs = None if isinstance(fs, LocalFileSystem) else fs
        if fs.isdir(path):
            base = path.rstrip("/")
            files = [f for f in fs.find(base) if _data_file(f, base)]
            if not files:
                raise NoParquetFiles(f"no Parquet files under {url}")
        else:
            base = path.rsplit("/", 1)[0] if "/" in path else "."
            files = [f for f in (fs.find(base) if fs.isdir(base) else []) if f.startswith(path) and _data_file(f, base)]
            if not files:
                raise NoParquetFiles(f"no folder, and no Parquet files whose names start with it, at {url}")
        return ds.dataset(sorted(files), filesystem=arrow_fs, format="parquet", partitioning="hive",
                          partition_base_dir=base)

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        dataset = self.dataset(project)
        table = dataset.to_table() if nrows is None else dataset.head(nrows)
        return table.to_pandas()

    def read_after(self, project: Path, column: str, after: Any) -> pd.DataFrame:
        """Only the rows above the watermark, filtered by Arrow (files and row groups below it are skipped
        by their statistics)."""
        import pyarrow.dataset as ds

        dataset = self.dataset(project)
        return dataset.to_table(filter=None if after is None else ds.field(column) > after).to_pandas()

    def check(self, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
        try:
            dataset = self.dataset(project)
        except NoParquetFiles as exc:
            return [("data.path", str(exc), "a relative path is relative to the project folder; name a folder of "
                     ".parquet files (hive partitions like year=2024/ allowed), a prefix of their names, or an "
                     "fsspec URL")]
        except ImportError as exc:
            return [("data.path", f"cannot open {self.url(project)!r}: {exc}",
                     "install the fsspec backend for that URL scheme (s3fs, gcsfs, adlfs)")]
        except Exception as exc:  # Arrow's error for a file that is not Parquet, or mismatched schemas
            return [("data.path", f"cannot be read as a Parquet dataset: {_first_line(exc)}",
                     "every file under the path must be Parquet with compatible columns")]
        try:
            dataset.head(5)
        except Exception as exc:  # discovery reads footers lazily: a broken file shows up only when read
            return [("data.path", f"cannot be read as a Parquet dataset: {_first_line(exc)}",
                     "every file under the path must be Parquet with compatible columns")]
        return missing_columns(self.config, list(dataset.schema.names))


def _data_file(path: str, base: str) -> bool:
    """A file Arrow would read: no part of its path below `base` starts with `_` or `.`, except hive folders."""
    parts = path[len(base):].strip("/").split("/")
    return not any(p.startswith((".", "_")) for p in parts)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]
