# mlops_jsonl/tracker.py
"""A tracker flavor: every run is one JSON line (params, metrics, artifacts, status) appended at `end_run`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mlops.flavors import Flavor
from mlops.recipe.schema import TrackerConfig
from mlops.tracking import Tracker, flatten_params


class JsonlTrackerConfig(TrackerConfig):
    flavor: Literal["jsonl"] = "jsonl"
    path: str = Field("runs.jsonl", description="The JSON Lines file, relative to the state directory.")


class JsonlTracker(Tracker):
    def __init__(self, cfg: JsonlTrackerConfig, state_dir: Path):
        self.file = Path(state_dir) / cfg.path
        self.run: dict[str, Any] = {}

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        self.run = {"id": uuid.uuid4().hex, "name": run_name, "tags": dict(tags), "params": {}, "metrics": {},
                    "history": [], "artifacts": {}, "started": time.time()}
        return self.run["id"]

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run["params"].update(flatten_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self.run["metrics"].update(values)
        self.run["history"].append({"step": step, **values})

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        self.run["artifacts"][artifact_file] = json.loads(json.dumps(obj, default=str))

    def lightning_logger(self) -> Any:
        return _lightning_logger(self)

    def end_run(self, status: str) -> None:
        if not self.run:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with self.file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**self.run, "status": status, "ended": time.time()}) + "\n")
        self.run = {}

    def ui_hint(self) -> str:
        return f"cat {self.file}"


def _lightning_logger(tracker: JsonlTracker) -> Any:
    from lightning.pytorch.loggers import Logger  # heavy: imported when training starts, not when the flavor loads

    class _Logger(Logger):
        def __init__(self, tracker: JsonlTracker):
            super().__init__()
            self._tracker = tracker

        @property
        def name(self) -> str:
            return "jsonl"

        @property
        def version(self) -> str:
            return self._tracker.run["id"]

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            self._tracker.log_params(dict(params) if isinstance(params, Mapping) else vars(params))

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            self._tracker.log_metrics(metrics, step)

    return _Logger(tracker)


FLAVOR = Flavor("tracker", "jsonl", JsonlTrackerConfig, "mlops_jsonl.tracker:JsonlTracker",
                conf="mlops_jsonl:conf/tracking/jsonl.yaml", description="Runs appended to a JSON Lines file.")
