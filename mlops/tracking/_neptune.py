"""Neptune through the ``neptune`` client itself.

Lightning's ``NeptuneLogger`` raises since 2.6.4 (Neptune's hosted service shut
down on 2026-03-05), so training logs through :class:`RunLogger` below instead.
``offline`` and ``debug`` need nothing; ``async``/``sync`` need a self-hosted server.

Recipe::

    tracking:
      flavor: neptune
      project: team/churn
      mode: offline                        # offline | debug | async | sync
      api_token_env: NEPTUNE_API_TOKEN      # async/sync: the env var holding the token
      server_url_env: NEPTUNE_SERVER_URL    # async/sync: the env var holding the server URL
"""

from __future__ import annotations

import base64
import functools
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import neptune
from neptune.common.warnings import NeptuneWarning
from neptune.exceptions import NeptuneException
from neptune.types import File

from mlops._layout import Layout
from mlops.errors import TargetUnavailable
from mlops.tracking._base import RunStatus, Tracker, flatten_params, json_text

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from mlops.recipe.schema import NeptuneTracking

# Tabular models mostly train without a GPU, and neptune would say so on every run.
warnings.filterwarnings("ignore", message=r"Info \(NVML\)", category=NeptuneWarning)

# neptune 1.x reads this when a run starts (neptune/internal/operation_processors/utils.py)
# and falls back to ./.neptune in the working directory.
_DATA_DIR_ENV = "NEPTUNE_DATA_DIRECTORY"


class NeptuneTracker(Tracker):
    def __init__(self, cfg: NeptuneTracking, state_dir: Path):
        self.cfg = cfg
        # The inner `.neptune` is what `neptune sync --path <state_dir>/neptune` looks for.
        self.data_dir = Layout(state_dir).neptune / ".neptune"
        self.run: neptune.Run | None = None
        self.run_id: str | None = None

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        token = self._check_server() if self.cfg.mode in ("async", "sync") else None
        with _env(_DATA_DIR_ENV, str(self.data_dir)):
            run = neptune.init_run(
                project=self.cfg.project,
                mode=self.cfg.mode,
                api_token=token,
                name=run_name,
                tags=[f"{k}:{v}" for k, v in tags.items()],
                # The entry point is the mlops CLI, not the team's code; the recipe is the source.
                source_files=[],
            )
        self.run = run
        # Offline runs get no sys/id; their UUID is what names their folder on disk.
        self.run_id = run["sys/id"].fetch() if self.cfg.mode in ("async", "sync") else str(run._id)
        return self.run_id

    def resume_run(self, run_id: str) -> None:
        if self.cfg.mode == "offline":
            run = self._reopen_offline(run_id)
        elif self.cfg.mode == "debug":
            # debug keeps nothing once its process ends: train's run is gone, so this is a new (also kept-nothing) run.
            with _env(_DATA_DIR_ENV, str(self.data_dir)):
                run = neptune.init_run(project=self.cfg.project, mode="debug", source_files=[])
        else:
            token = self._check_server()
            try:
                run = neptune.init_run(project=self.cfg.project, mode=self.cfg.mode, api_token=token,
                                       with_id=run_id)
            except NeptuneException as exc:
                raise LookupError(f"no Neptune run {run_id} in project {self.cfg.project}: {exc}") from exc
        self.run, self.run_id = run, run_id

    def _reopen_offline(self, run_id: str) -> neptune.Run:
        """Another part of the offline run ``run_id``, which `neptune sync` uploads as that same run.

        neptune cannot resume an offline run (its offline backend answers ``with_id`` with RunNotFound),
        but sync groups the folders under ``offline/`` by the run UUID in their names
        (``run__<uuid>__<pid>__<random>``; neptune/cli/collect.py) and replays each into one run. So
        this opens a run under train's UUID in a folder of its own. It writes no initial attributes
        (name, tags, sys/failed=False): sync replays the folders in directory order, and these must not
        overwrite train's. Needs neptune 1.x internals (pinned; the 1.x client is in maintenance).
        """
        if not list((self.data_dir / "offline").glob(f"run__{run_id}__*")):
            raise LookupError(f"no offline Neptune run {run_id} under {self.data_dir / 'offline'}")
        from neptune.internal.backends.api_model import ApiExperiment
        from neptune.internal.container_type import ContainerType
        from neptune.internal.id_formats import SysId, UniqueId

        class Reopened(neptune.Run):
            def _get_or_create_api_object(self) -> ApiExperiment:
                project = self._project_api_object
                return ApiExperiment(id=UniqueId(run_id), type=ContainerType.RUN, sys_id=SysId(f"OFFLINE-{run_id}"),
                                     workspace=project.workspace, project_name=project.name)

            def _write_initial_attributes(self) -> None:
                pass

        with _env(_DATA_DIR_ENV, str(self.data_dir)):
            return Reopened(project=self.cfg.project, mode="offline", source_files=[], capture_stdout=False,
                            capture_stderr=False, capture_hardware_metrics=False, capture_traceback=False)

    def leave_run(self) -> None:
        self._run().stop()  # flushes what was logged; a neptune run has no status to leave open
        self.run = self.run_id = None

    def _check_server(self) -> str:
        """The token, once it is known to point at the server named by ``server_url_env``.

        neptune 1.x takes the server address from inside the token, with no
        override; a token for another server would otherwise hang in retries.
        """
        token_env, url_env = self.cfg.api_token_env, self.cfg.server_url_env
        mode = f"<tracking.mode={self.cfg.mode}>"
        token = os.environ.get(token_env)
        if not token:
            raise TargetUnavailable(
                f"{mode} needs a Neptune API token in the environment variable {token_env} "
                f"<tracking.api_token_env={token_env}>, and it is not set. Export it, or use tracking.mode=offline."
            )
        url = os.environ.get(url_env)
        if not url:
            raise TargetUnavailable(
                f"{mode} needs the URL of a self-hosted Neptune server in the environment variable {url_env} "
                f"<tracking.server_url_env={url_env}>, and it is not set. Export it, or use tracking.mode=offline."
            )
        host = urlparse(url).hostname or ""
        if host == "neptune.ai" or host.endswith(".neptune.ai"):
            raise TargetUnavailable(
                f"{url_env}={url} is Neptune's hosted service, which shut down on 2026-03-05. "
                "Use a self-hosted server, or tracking.mode=offline."
            )
        try:
            issuer = json.loads(base64.b64decode(token.strip()))["api_address"]
        except (ValueError, TypeError, KeyError):  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise TargetUnavailable(
                f"the environment variable {token_env} <tracking.api_token_env={token_env}> "
                "does not hold a Neptune API token (base64 JSON with an api_address)."
            ) from None
        if issuer.rstrip("/").lower() != url.rstrip("/").lower():
            raise TargetUnavailable(
                f"the token in {token_env} was issued by {issuer}, but {url_env}={url}. "
                f"Use a token from {url}, or point {url_env} at {issuer}."
            )
        return token

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run()["parameters"] = flatten_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        run = self._run()
        for name, value in metrics.items():
            run[f"metrics/{name}"].append(float(value), step=step)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str) -> None:
        self._run()[f"artifacts/{artifact_file}"].upload(File.from_content(json_text(obj), extension="json"))

    def lightning_logger(self) -> Logger:
        return _run_logger_class()(self._run(), name=self.cfg.project, version=self.run_id)

    def end_run(self, status: RunStatus) -> None:
        run = self._run()
        if status == "FAILED":
            run["sys/failed"] = True
        run.stop()
        self.run = self.run_id = None

    def ui_hint(self) -> str:
        if self.cfg.mode in ("async", "sync"):
            url = os.environ.get(self.cfg.server_url_env, f"${self.cfg.server_url_env}")
            return f"open {url}, project {self.cfg.project}"
        if self.cfg.mode == "debug":
            return "mode=debug keeps nothing after the run ends"
        return (
            f"offline runs are in {self.data_dir}; to upload them to a self-hosted server: "
            f"neptune sync --path {self.data_dir.parent} --project {self.cfg.project}"
        )

    def _run(self) -> neptune.Run:
        if self.run is None:
            raise RuntimeError("no open Neptune run: call start_run() first")
        return self.run


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


@functools.cache
def _run_logger_class() -> type[Logger]:
    # Lightning is imported here, not at the top: logging params from a flow
    # step should not pay for importing torch.
    from argparse import Namespace

    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities import rank_zero_only

    class RunLogger(Logger):
        """Lightning metrics into an open neptune run, as ``metrics/<name>`` series."""

        def __init__(self, run: neptune.Run, name: str, version: str | None):
            super().__init__()
            self._run = run
            self._name = name
            self._version = version

        @property
        def name(self) -> str:
            return self._name

        @property
        def version(self) -> str | None:
            return self._version

        @property
        def experiment(self) -> neptune.Run:
            return self._run

        @rank_zero_only
        def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
            if isinstance(params, Namespace):
                params = vars(params)
            self._run["parameters"] = flatten_params(params)

        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            for key, value in metrics.items():
                self._run[f"metrics/{key}"].append(float(value), step=step)

    return RunLogger
