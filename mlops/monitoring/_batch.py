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

from mlops.monitoring._profiler import BatchReport, make_profiler
from mlops.recipe.schema import Config


def reference_profile(cfg: Config, state_dir: Path) -> Any | None:
    """The champion's training-data profile (or the latest version's), if any version exists."""
    from mlops.registry import Registry

    reg = Registry(state_dir / "registry")
    versions = reg.versions(cfg.name)
    if not versions:
        return None
    aliases = reg.aliases(cfg.name)
    mv = reg.get(cfg.name, aliases["champion"]) if "champion" in aliases else versions[-1]
    path = mv.file("reference_profile.bin")
    return make_profiler(cfg.monitoring.flavor).read(path) if path.is_file() else None


def check_batch(cfg: Config, state_dir: Path, frame: pd.DataFrame) -> BatchReport:
    profiler = make_profiler(cfg.monitoring.flavor if cfg.monitoring.flavor != "none" else "whylogs")
    reference = reference_profile(cfg, state_dir)
    if reference is None:
        reference = profiler.profile(frame.head(0))
    return profiler.validate(frame, reference, cfg.data, cfg.monitoring)


def quarantine(cfg: Config, state_dir: Path, source: Path | None, frame: pd.DataFrame, report: BatchReport
               ) -> Path:
    """Keep the failing batch and its report under quarantine/; the source file is moved when it is local."""
    dest = state_dir / "quarantine" / cfg.name / time.strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    if source is not None and source.is_file():
        shutil.move(str(source), dest / source.name)
    else:
        frame.to_csv(dest / "batch.csv", index=False)
    (dest / "report.json").write_text(json.dumps({
        "rows": report.rows,
        "failures": [{"column": f.column, "constraint": f.constraint, "details": f.details} for f in report.failures],
    }, indent=2, default=str))
    return dest


def render_failures(report: BatchReport, source: str) -> str:
    lines = [f"{len(report.failures)} constraint(s) failed for {source} ({report.rows} rows):"]
    lines += [f"  - {f.render()}" for f in report.failures]
    return "\n".join(lines)
