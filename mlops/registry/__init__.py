"""Immutable model versions and aliases; see README.md in this folder."""

from mlops.registry._registry import ModelVersion, Registry, RunLog, sha256_file, write_atomic

__all__ = sorted(["ModelVersion", "Registry", "RunLog", "sha256_file", "write_atomic"])
