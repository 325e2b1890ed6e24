"""The data-validation gate: every ingested batch is profiled and checked; a failing batch is quarantined.

Constraints come from the recipe (types, null ratio, physical bounds) and from the reference profile of
the current champion's training data (category sets, non-negativity). A quarantined batch is moved out
of the way under ``<state>/quarantine/<model>/`` with a JSON report naming each broken constraint, so
training never sees it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mlops._atomic import fsync_path, fsync_tree
from mlops._layout import Layout
from mlops.monitoring._profiler import BatchReport, Profiler, make_profiler
from mlops.recipe.schema import Config


def check_batch(cfg: Config, frame: pd.DataFrame, reference: Any | None, profiler: Profiler | None = None
                ) -> BatchReport:
    """The recipe's constraints on `frame`, plus those of the champion's training-data profile `reference`
    (None before the first version: then only the recipe's own apply)."""
    profiler = profiler or make_profiler(cfg.monitoring.flavor if cfg.monitoring.flavor != "none" else "whylogs")
    return profiler.validate(frame, reference, cfg.data, cfg.monitoring)


def quarantine_dir(state_dir: Path, model: str) -> Path:
    return Layout(state_dir).quarantine(model)


def quarantined(state_dir: Path, model: str, key: str) -> Path | None:
    """Where the batch or window named `key` (a data fingerprint, or `window-<start>`) was quarantined, if it was."""
    path = quarantine_dir(state_dir, model) / _slug(key)
    return path if (path / "report.json").is_file() else None


def quarantine(state_dir: Path, model: str, key: str, payload: Path, problems: list[str],
               report: BatchReport | None = None, **about: Any) -> Path:
    """Set a failing batch (or traffic window) aside with a JSON report, atomically; returns its folder.

    The payload file is moved out of the way (a dataset snapshot never stays where training looks). A
    second quarantine of the same key is a no-op: polling the same bad file again reports it once.
    """
    dest = quarantine_dir(state_dir, model) / _slug(key)
    if (dest / "report.json").is_file():
        payload.unlink(missing_ok=True)  # the same bad batch, looked at again: reported once, kept nowhere
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if payload.is_file():
        shutil.move(str(payload), tmp / payload.name)
    (tmp / "report.json").write_text(json.dumps({
        "key": key, "quarantined_at": time.time(), "problems": problems, **about,
        "rows": report.rows if report else None,
        "failures": [{"column": f.column, "constraint": f.constraint, "details": f.details}
                     for f in (report.failures if report else [])],
    }, indent=2, default=str))
    fsync_tree(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    fsync_path(dest.parent)
    return dest


def _slug(key: str) -> str:
    return key.removeprefix("sha256:")[:20] if key.startswith("sha256:") else key


def render_failures(report: BatchReport, source: str) -> str:
    lines = [f"{len(report.failures)} constraint(s) failed for {source} ({report.rows} rows):"]
    lines += [f"  - {f.render()}" for f in report.failures]
    return "\n".join(lines)
