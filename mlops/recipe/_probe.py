"""The data probe run at config load (`mlops plan`, `mlops up`): the data exists and has the named columns.

Read-only, and reported as config problems (the key to edit, the message, a hint), since a wrong path or
column name is a recipe error. It reads through `mlops.tables`, below the recipe, not `mlops.data` above it.
"""

from __future__ import annotations

from pathlib import Path

from mlops.recipe.schema import DataConfig
from mlops.tables import read_table, resolve_path


def check_data(data: DataConfig, project: Path, cache_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """Read-only checks run at config load: the data exists and has the named columns.

    Returns (dotted key, message, hint) triples; empty when all is well.
    """
    if data.source == "file":
        import fsspec

        url = resolve_path(data, project)
        try:
            fs, path = fsspec.core.url_to_fs(url)
            exists = fs.exists(path)
        except (ImportError, ValueError) as exc:
            return [("data.path", f"cannot open {url!r}: {exc}", "install the fsspec backend for that URL scheme")]
        if not exists:
            return [("data.path", f"file not found: {url}",
                     "paths are relative to the project folder; check the name, or use an fsspec URL")]
    try:
        head = read_table(data, project, nrows=5, cache_dir=cache_dir)
    except Exception as exc:  # a parser error of any reader: show it, don't crash
        return [("data.path", f"cannot be read as {data.format}: {str(exc).splitlines()[0]}",
                 "check the file format, or set data.format")]
    columns = [str(c) for c in head.columns]
    problems = []
    if data.target not in columns:
        problems.append(("data.target", f"column {data.target!r} is not in the data; its columns are: "
                         f"{', '.join(columns)}", "set data.target to the column you want to predict"))
    for group in ("numeric", "categorical"):
        missing = [c for c in getattr(data, group) if c not in columns]
        if missing:
            problems.append((f"data.{group}", f"columns not in the data: {', '.join(map(repr, missing))}",
                             "column names are case-sensitive; the data has: " + ", ".join(columns)))
    return problems
