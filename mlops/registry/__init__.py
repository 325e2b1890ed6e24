"""Immutable model versions and aliases; see README.md in this folder."""

# write_atomic and sha256_file live in mlops._atomic (their one owner); re-exported here for existing callers.
from mlops._atomic import sha256_file, write_atomic
from mlops.registry._registry import ModelVersion, Registry, RunLog
from mlops.registry._store import ModelStore

__all__ = sorted(["ModelStore", "ModelVersion", "Registry", "RunLog", "sha256_file", "write_atomic"])
