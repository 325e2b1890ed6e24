"""MLflow through an explicit ``MlflowClient``: the run id is passed around, never set globally.

Recipe::

    tracking:
      flavor: mlflow
      experiment: churn
      uri: null               # default: sqlite:///<state_dir>/mlflow.db
      ui: false               # true: `mlops up` starts `mlflow ui` on 127.0.0.1:<ui_port>, `mlops down` stops it
      ui_port: 5000
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

# MLflow starts its usage telemetry when it is imported: a thread that fetches a config from the internet and
# a consumer thread, in every process that tracks (a flow run, the runner's forkserver, where a thread alive at
# fork time is a hazard). Off unless the user says otherwise, as mlops does for Prefect's and whylogs' analytics.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from mlops._atomic import copy_of_template
from mlops._layout import Layout, machine_cache
from mlops.tracking._base import RunStatus, Tracker, UiService, flatten_params, json_text

if TYPE_CHECKING:
    from lightning.pytorch.loggers import MLFlowLogger

    from mlops.recipe.schema import MlflowTracking

# Creating the sqlite database runs alembic migrations, which announce every
# step at INFO; a user running `mlops up` has no use for them.
for _noisy in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# MLflow rejects a log_batch with more than 100 params.
_PARAMS_PER_BATCH = 100
# Server-side stores own their artifact roots; only a local database needs us to pick one.
_SERVER_SCHEMES = ("http", "https", "databricks")


class MlflowTracker(Tracker):
    def __init__(self, cfg: MlflowTracking, state_dir: Path):
        self.cfg = cfg
        self.state_dir = state_dir
        self.uri = cfg.uri or f"sqlite:///{Layout(state_dir).mlflow_db}"
        local = urlparse(self.uri).scheme not in _SERVER_SCHEMES
        self.artifact_location = str(Layout(state_dir).mlartifacts) if local else None
        self.run_id: str | None = None

    @functools.cached_property
    def client(self) -> MlflowClient:
        # Opening a sqlite store creates the database (about 4 s of migrations the
        # first time), so it waits for the first run: making a tracker, e.g. for
        # `mlops plan` or ui_hint(), has no side effects.
        if self.artifact_location is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.uri == f"sqlite:///{Layout(self.state_dir).mlflow_db}":
            # The project's own database starts as a copy of one migrated once per machine and MLflow version;
            # MLflow then adds its Default experiment under this project's artifact root, as for a new file.
            copy_of_template(Layout(self.state_dir).mlflow_db,
                             machine_cache() / f"mlflow-{mlflow.__version__}.db", _migrate_empty)
        return MlflowClient(self.uri)

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def resume_run(self, run_id: str) -> None:
        # The client logs to any run by id, whichever process created it; get_run checks that it exists.
        try:
            self.run_id = self.client.get_run(run_id).info.run_id
        except MlflowException as exc:
            raise LookupError(f"no MLflow run {run_id} in {self.uri}: {exc.message}") from exc

    def leave_run(self) -> None:
        self.run_id = None

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        if exp is None:
            return self.client.create_experiment(self.cfg.experiment, artifact_location=self.artifact_location)
        if exp.lifecycle_stage == "deleted":
            # A deleted experiment still holds its name, so it can only come back, not be recreated.
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        run_id = self._run()
        entries = [Param(k, str(v)) for k, v in flatten_params(params).items()]
        for i in range(0, len(entries), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=entries[i : i + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        run_id = self._run()
        now_ms = int(time.time() * 1000)
        entries = [Metric(k, float(v), now_ms, step or 0) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=entries)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        run_id = self._run()
        self.client.log_text(run_id, json_text(obj), artifact_file)

    def lightning_logger(self) -> MLFlowLogger:
        return _run_bound_logger()(tracking_uri=self.uri, run_id=self._run())

    def end_run(self, status: RunStatus) -> None:
        run_id = self._run()
        self.client.set_terminated(run_id, status)
        self.run_id = None

    def ui_hint(self) -> str:
        if urlparse(self.uri).scheme in _SERVER_SCHEMES:
            return f"open {self.uri}"
        return f"mlflow ui --backend-store-uri {self.uri}"

    def _ui_base(self) -> str | None:
        if urlparse(self.uri).scheme in _SERVER_SCHEMES:
            return self.uri.rstrip("/")
        return f"http://127.0.0.1:{self.cfg.ui_port}" if self.cfg.ui else None

    def run_url(self, run_id: str) -> str | None:
        base = self._ui_base()
        if base is None:
            return None
        try:
            experiment = self.client.get_run(run_id).info.experiment_id
        except MlflowException:
            return None
        return f"{base}/#/experiments/{experiment}/runs/{run_id}"

    def ui(self) -> UiService | None:
        """`tracking.ui: true`: `mlflow ui` on the local database, loopback only."""
        if not self.cfg.ui or urlparse(self.uri).scheme in _SERVER_SCHEMES:
            return None
        import sys

        port = self.cfg.ui_port
        return UiService(name="mlflow", argv=[sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", self.uri,
                                              "--host", "127.0.0.1", "--port", str(port)],
                         host="127.0.0.1", port=port, port_key="tracking.ui_port", url=f"http://127.0.0.1:{port}")

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no open MLflow run: call start_run() first")
        return self.run_id


def _migrate_empty(db: Path) -> None:
    """MLflow's tables at its head revision, without the Default experiment (whose artifact root is per project)."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(f"sqlite:///{db}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()


@functools.cache
def _run_bound_logger() -> type[MLFlowLogger]:
    # Lightning is imported here, not at the top: logging params from a flow
    # step should not pay for importing torch.
    from lightning.pytorch.loggers import MLFlowLogger

    class RunBoundMLFlowLogger(MLFlowLogger):
        def finalize(self, status: str = "success") -> None:
            # MLFlowLogger would mark the run FINISHED when fit ends, before the
            # test metrics and lineage are logged; the tracker's end_run decides.
            pass

    return RunBoundMLFlowLogger
