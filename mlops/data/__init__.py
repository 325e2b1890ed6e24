"""Data sources (a flavor kind) and the validate step: read, fingerprint and check tabular data."""

from mlops.data._dataset import ParquetDatasetSource
from mlops.data._incremental import bound, watermark, window_frame
from mlops.data._ingest import (check_columns, fingerprint, read_after, read_batch, read_frame, read_snapshot,
                               release_arrow_memory, write_snapshot)
from mlops.data._source import DataSource, FileSource, SklearnSource, make_source, missing_columns
from mlops.data._sql import SqlSource
from mlops.data._validate import ValidationReport, finite_columns, repair_frame, validate_frame

__all__ = sorted(["DataSource", "FileSource", "ParquetDatasetSource", "SklearnSource", "SqlSource",
                  "ValidationReport", "bound", "check_columns", "finite_columns", "fingerprint", "make_source",
                  "missing_columns", "read_after", "read_batch", "read_frame", "read_snapshot",
                  "release_arrow_memory", "repair_frame", "validate_frame", "watermark",
                  "window_frame", "write_snapshot"])
