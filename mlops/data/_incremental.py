"""`data.incremental` and `data.window`: watermarks of incremental snapshots, and the training window over them.

YAML::

    data:
      source: sql
      query: SELECT * FROM events
      incremental: {column: updated_at}   # level 1+: each ingest reads only rows with updated_at > the watermark
      window: {days: 30}                  # or {rows: 50000}; default: every snapshot of the chain

A chain is a full read followed by the incremental reads after it; `mlops data refresh --full` starts a new one.
Rows are new when their column is strictly above the watermark, so the column must grow with every new or changed
row (an updated-at timestamp, an increasing id); rows written later with a value at or below it are not read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from mlops.recipe.schema import WindowConfig


def watermark(frame: pd.DataFrame, column: str) -> tuple[Any, str]:
    """The largest value of `column`, as JSON (an ISO string for a timestamp), and its type."""
    top = frame[column].max()
    if isinstance(top, (pd.Timestamp, dt.datetime, dt.date)):
        return pd.Timestamp(top).isoformat(), "timestamp"
    if hasattr(top, "item"):  # a numpy scalar
        top = top.item()
    return top, "number" if isinstance(top, (int, float)) else "text"


def bound(value: Any, kind: str) -> Any:
    """A recorded watermark as the value a source compares the column with."""
    return pd.Timestamp(value).to_pydatetime() if kind == "timestamp" and value is not None else value


def window_frame(parts: list[tuple[dict[str, Any], pd.DataFrame]], column: str, window: WindowConfig | None
                 ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The rows of `window` over a chain's snapshots (oldest first), and the snapshots that went in:
    [{fingerprint, watermark, rows}], `rows` being how many of that snapshot's rows are in the window.

    Every snapshot of a chain holds only rows above the one before's watermark, so the latest N rows, or the last
    D days, are at the end; the rows stay in ingest order (the split is seeded on that order)."""
    frame = pd.concat([f.assign(_snapshot=i) for i, (_, f) in enumerate(parts)], ignore_index=True)
    if window is not None and window.rows is not None:
        keep = frame[column].rank(method="first", ascending=False) <= window.rows
        frame = frame[keep]
    elif window is not None and window.days is not None:
        if not pd.api.types.is_datetime64_any_dtype(frame[column]):
            from mlops.errors import ConfigError, Problem

            raise ConfigError([Problem("data.window.days", f"counts days of data.incremental.column={column!r}, "
                                       f"which holds {frame[column].dtype} values, not timestamps", "",
                                       "use data.window.rows for a numeric column, or an updated_at timestamp")])
        frame = frame[frame[column] >= frame[column].max() - pd.Timedelta(days=window.days)]
    counts = frame["_snapshot"].value_counts()
    used = [{"fingerprint": meta["fingerprint"], "watermark": meta["incremental"]["watermark"],
             "rows": int(counts[i])} for i, (meta, _) in enumerate(parts) if i in counts.index]
    return frame.drop(columns="_snapshot").reset_index(drop=True), used
