"""Ingest and validate tabular data: scikit-learn's bundled datasets, or CSV/Parquet at any fsspec URL."""

from mlops.data._ingest import fingerprint, read_frame
from mlops.data._validate import ValidationReport, validate_frame
from mlops.tables import resolve_path

__all__ = sorted(["ValidationReport", "fingerprint", "read_frame", "resolve_path", "validate_frame"])
