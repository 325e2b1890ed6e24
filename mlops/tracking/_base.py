"""The tracker contract and the flavor registry.

A tracker owns one run from ``start_run`` to ``end_run``; everything logged in
between, including what Lightning logs through :meth:`Tracker.lightning_logger`,
lands in that run.

Recipe::

    tracking:
      flavor: mlflow          # or: neptune
      experiment: churn

Python::

    tracker = make_tracker(cfg.tracking, state_dir)
    run_id = tracker.start_run("churn-train", {"maturity": "2"})
    try:
        tracker.log_params(cfg.model.model_dump())
        trainer = Trainer(logger=tracker.lightning_logger(), ...)
        trainer.fit(...)
        tracker.log_dict(lineage, "lineage.json")
    except BaseException:
        tracker.end_run("FAILED")
        raise
    tracker.end_run("FINISHED")

A run can outlive its process: ``leave_run()`` lets go of it still open, and a
later process logs into it after ``resume_run(run_id)`` (``mlops run train``,
then ``mlops run evaluate``, then ``mlops run register``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from mlops.recipe.schema import TrackerConfig

RunStatus = Literal["FINISHED", "FAILED"]


class Tracker(ABC):
    """One experiment run in a tracking backend."""

    @abstractmethod
    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        """Open a new run and return its id."""

    def resume_run(self, run_id: str) -> None:
        """Reopen the run ``run_id`` (from ``start_run``, maybe in another process): what is logged next
        lands in it, and ``end_run`` ends it. Level 0 trains, evaluates and registers in three processes.
        Raises LookupError if the backend has no such run. The default: a tracker that cannot reopen runs
        (level 0's evaluate and register then log nothing to it, and say so)."""
        raise LookupError(f"the {type(self).__name__} tracker cannot reopen a run from another process")

    def leave_run(self) -> None:
        """Stop writing to the run without ending it; it stays open for a later ``resume_run``."""

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) dict as flat params: ``{"model": {"lr": 1e-3}}`` becomes ``model.lr``."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    @abstractmethod
    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        """Store ``obj`` as a JSON artifact of the run, e.g. ``lineage.json``."""

    @abstractmethod
    def lightning_logger(self) -> Logger:
        """A Lightning logger that writes into the current run, not a new one.

        It leaves the run open when training ends: ``end_run`` decides the status.
        """

    @abstractmethod
    def end_run(self, status: RunStatus) -> None: ...

    @abstractmethod
    def ui_hint(self) -> str:
        """The command or address that shows the runs to a person."""

    def run_url(self, run_id: str) -> str | None:
        """The address of one run in the tracker's UI, if it has one a browser can open; else None."""
        return None

    def ui(self) -> UiService | None:
        """A local UI process `mlops up` starts beside Prefect and `mlops down` stops (e.g. `tracking.ui: true`
        for MLflow), or None. The target supervises it without knowing which tool it is, and asks only when the
        flavor's config has a true ``ui`` field."""
        return None


@dataclass(frozen=True)
class UiService:
    """A UI process for a target to supervise: its name (pid and log files), command line, and address."""

    name: str
    argv: list[str]
    host: str
    port: int
    port_key: str  # the config key that sets the port, named when it is taken
    url: str


def make_tracker(cfg: TrackerConfig, state_dir: Path) -> Tracker:
    """The tracker flavor ``cfg.flavor`` names (mlops.flavors), constructed as ``Impl(cfg, state_dir)``; its
    local data lives under ``state_dir``. The backend (mlflow, neptune: seconds to import) is imported only now."""
    from mlops.flavors import get

    return get("tracker", cfg.flavor).load()(cfg, Path(state_dir).resolve())


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Dotted keys, scalar values; anything else (lists, None, paths) as its ``str``.

    Both backends store only scalars, and one shape means ``model.lr`` is the
    same key whichever tracker a stack uses.
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{dotted}."))
        elif isinstance(value, bool | int | float | str):
            flat[dotted] = value
        else:
            flat[dotted] = str(value)
    return flat


def json_text(obj: Mapping[str, Any]) -> str:
    """The text of a JSON artifact; values JSON lacks (paths, datetimes) as their ``str``."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
