"""Ingest and validate tabular data: scikit-learn's bundled datasets, or CSV/Parquet at any fsspec URL."""

from mlops.data._ingest import check_columns, fingerprint, read_frame, resolve_path
from mlops.data._validate import ValidationReport, validate_frame

__all__ = sorted(["ValidationReport", "check_columns", "fingerprint", "read_frame", "resolve_path", "validate_frame"])
