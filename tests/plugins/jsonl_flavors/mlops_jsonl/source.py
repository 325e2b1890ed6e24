# mlops_jsonl/source.py
"""A data-source flavor: rows from a JSON Lines file (one object per line)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field

from mlops.data import DataSource, missing_columns
from mlops.flavors import Flavor
from mlops.recipe.schema import DataConfig


class JsonlData(DataConfig):
    source: Literal["jsonl"] = "jsonl"
    path: str = Field(description="The JSON Lines file, relative to the project.")

    def describe(self) -> str:
        return self.path


class JsonlSource(DataSource):
    def _file(self, project: Path) -> Path:
        p = Path(self.config.path)
        return p if p.is_absolute() else project / p

    def read(self, project: Path, *, nrows: int | None = None, cache_dir: Path | None = None,
             write_cache: bool = False) -> pd.DataFrame:
        return pd.read_json(self._file(project), lines=True, nrows=nrows)

    def check(self, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
        if not self._file(project).is_file():
            return [("data.path", f"no JSON Lines file at {self._file(project)}", "paths are relative to the project")]
        return missing_columns(self.config, [str(c) for c in self.read(project, nrows=5).columns])


FLAVOR = Flavor("data_source", "jsonl", JsonlData, "mlops_jsonl.source:JsonlSource",
                description="Rows from a JSON Lines file.")
