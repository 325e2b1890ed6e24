"""Reading a tabular source into a DataFrame: a bundled scikit-learn dataset, or CSV/Parquet at any fsspec URL.

Plain I/O below the recipe layer: it takes any object with the data config's `source`, `dataset`, `path` and
`format` (:class:`TableSource`), so both the recipe loader's data probe and the data layer read through it.
"""

from mlops.tables._read import TableSource, read_table, resolve_path

__all__ = sorted(["TableSource", "read_table", "resolve_path"])
