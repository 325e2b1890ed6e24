"""The state directory's layout: the one place that spells out where each piece of a project's state lives.

Every module asks this for a path instead of joining strings onto ``state_dir``, so a move is one edit here::

    layout = Layout(state_dir)
    layout.registry                       # immutable model versions and aliases
    layout.snapshot(name, fingerprint)    # one validated dataset snapshot

    <state_dir>/
      registry/            model versions (mlops.registry)
      datasets/<model>/    snapshots (<fingerprint>.parquet) and their index.json
      training/<model>/<key>/   checkpoints and history of one training key
      exports/<model>/<version>/  model.onnx, signature, the stock server repository
      work/<model>.json    level 0: what `mlops run <step>` left for the next step
      runs/                the run history (`mlops runs`)
      monitoring/<model>/<version>/  traffic windows, spool, judged.json (Triton's capture gets monitoring/<model>)
      quarantine/<model>/  batches and windows that failed validation, with reports
      cache/               local copies of slow sources (bundled datasets)
      pids/ logs/          background services (one .pid and one .log each)
      services.json        the ports and URLs `up` started them with (removed by `down`)
      runner/<model>.json  the Prefect runner's spec (+ .ready with the Plan digest)
      triton/              the local Triton: runtime, server.json, models/ (the served repository),
                           serving/<model_name>.json (champion and previous)
      lock lock.json       the project lock: held (flock) by the command that changes the project, and who that is
      pulumi-stack.json    target=aws: the stack `up` provisioned, so `down` works from saved state alone
      prefect/ triton/ pulumi/ neptune/ mlflow.db mlartifacts/   each tool's own files

tests/test_layout.py fails if a module outside this one joins one of these names onto a state directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def machine_cache() -> Path:
    """Files any project on this machine may reuse and that can be rebuilt at any time (never a project's state):
    ``$MLOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlops``, else ``~/.cache/mlops``."""
    if explicit := os.environ.get("MLOPS_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops"


@dataclass(frozen=True)
class Layout:
    root: Path

    def __init__(self, root: Path | str):
        object.__setattr__(self, "root", Path(root))

    # ---------------------------------------------------------------- models and data
    @property
    def registry(self) -> Path:
        return self.root / "registry"

    def datasets(self, model: str) -> Path:
        return self.root / "datasets" / model

    def snapshot(self, model: str, fingerprint: str) -> Path:
        return self.datasets(model) / f"{fingerprint.removeprefix('sha256:')[:20]}.parquet"

    def snapshot_index(self, model: str) -> Path:
        return self.datasets(model) / "index.json"

    def training(self, model: str, key: str) -> Path:
        return self.root / "training" / model / key

    def export(self, model: str, version: int | str) -> Path:
        return self.root / "exports" / model / str(version)

    def work(self, model: str) -> Path:
        return self.root / "work" / f"{model}.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    # ---------------------------------------------------------------- monitoring
    def model_monitoring(self, model: str) -> Path:
        """monitoring/<model>: what Triton's capture is given; it adds <version>/windows itself."""
        return self.root / "monitoring" / model

    def monitoring(self, model: str, version: int | str) -> Path:
        return self.model_monitoring(model) / str(version)

    def windows(self, model: str, version: int | str) -> Path:
        return self.monitoring(model, version) / "windows"

    def judged(self, model: str, version: int | str) -> Path:
        return self.monitoring(model, version) / "judged.json"

    def drift_report(self, model: str, version: int | str) -> Path:
        """The HTML drift report the monitor flow links from the Prefect UI."""
        return self.monitoring(model, version) / "drift.html"

    def quarantine(self, model: str) -> Path:
        return self.root / "quarantine" / model

    # ---------------------------------------------------------------- services
    def pid(self, service: str) -> Path:
        return self.root / "pids" / f"{service}.pid"

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def services(self) -> Path:
        """The ports and URLs `up` started the project's services with (status, predict, down find them)."""
        return self.root / "services.json"

    def runner_spec(self, model: str) -> Path:
        return self.root / "runner" / f"{model}.json"

    def watchdog(self, model: str) -> Path:
        """What the runner's watchdog (level 3+) last saw and did: watching, restarted, gave up (mlops status)."""
        return self.root / "runner" / f"{model}.watchdog.json"

    @property
    def lock(self) -> Path:
        """The file `up`, `down`, `run`, `deploy`, `promote` and `rollback` hold a flock on (mlops._lock)."""
        return self.root / "lock"

    @property
    def lock_holder(self) -> Path:
        """Who holds the lock: ``{"pid", "command", "since"}``, replaced atomically by each holder."""
        return self.root / "lock.json"

    # ---------------------------------------------------------------- each tool's own files
    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    @property
    def flow_in_flight(self) -> Path:
        """Written before a command runs a flow in its own process, removed when Prefect has the run's end."""
        return self.root / "flow-in-flight.json"

    @property
    def prefect_db(self) -> Path:
        """The managed Prefect server's SQLite database (Prefect's default place under its PREFECT_HOME)."""
        return self.prefect / "prefect.db"

    @property
    def triton(self) -> Path:
        """The local Triton's runtime (bin/, backends/, caches/ links) and the files below."""
        return self.root / "triton"

    @property
    def triton_info(self) -> Path:
        """How the running Triton was started: pid, repository, host and ports."""
        return self.triton / "server.json"

    @property
    def triton_repository(self) -> Path:
        """The model repository the local Triton serves."""
        return self.triton / "models"

    @property
    def serving_states(self) -> Path:
        """The folder of the ``serving_state`` files: which models the local Triton serves."""
        return self.triton / "serving"

    def serving_state(self, model_name: str) -> Path:
        """Which versions of a served model are champion and previous."""
        return self.serving_states / f"{model_name}.json"

    @property
    def pulumi(self) -> Path:
        return self.root / "pulumi"

    @property
    def pulumi_stack(self) -> Path:
        return self.root / "pulumi-stack.json"

    @property
    def neptune(self) -> Path:
        return self.root / "neptune"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"
