"""The model-server interface: what flows, targets and the CLI ask of "the server", whatever runs it.

A server flavor is constructed as ``Impl(cfg, state_dir)`` with the whole validated Config (serving a
model needs its serving section, its monitoring sample and its name) and the project's state directory.

Python::

    server = stack.server                     # mlops.stack.Stack: the flavor the recipe's `serving:` names
    server.start()                            # local targets: make sure it runs
    exported = server.export(registered)      # RegisteredVersion -> ExportedModel (triton: model.onnx + signature)
    served = server.deploy(exported)          # ExportedModel -> ServedModel, no failed request on the way
    server.predict(rows)                      # rows checked against the served version's signature

YAML::

    serving:
      flavor: triton        # conf/serving/triton.yaml; a plugin's flavor: conf/serving/<name>.yaml
      model_name: churn

The built-in flavor is `triton` (mlops/serving/_triton.py). A second flavor, `inprocess`, lives in the tests
(tests/_inprocess_server.py): it serves the checkpoint in the test's own process and keeps its state in the
state directory, so the gate, promote and rollback steps run as unit tests in milliseconds. It is why an
`ExportedModel` need not be ONNX, and why the version that answers is the flavor's to say
(:meth:`ModelServer.answering_version`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from mlops.artifacts import ExportedModel, RegisteredVersion, ServedModel
    from mlops.recipe.schema import Config


class ModelServer(ABC):
    def __init__(self, cfg: Config, state_dir: Path):
        self.cfg = cfg
        self.state_dir = Path(state_dir)

    @property
    @abstractmethod
    def url(self) -> str:
        """Where clients reach it (shown by `mlops status` and `up`)."""

    @abstractmethod
    def start(self) -> None:
        """Make sure it runs (a no-op when it does); raises ServiceError if it cannot start."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop it (draining first); False if it was not running."""

    @abstractmethod
    def live(self) -> bool:
        """It answers."""

    @abstractmethod
    def export(self, version: RegisteredVersion) -> ExportedModel:
        """Write what serving the version needs, once per version (a second call reuses it). Its format is the
        flavor's: `deploy` of the same flavor is the only reader."""

    @abstractmethod
    def deploy(self, exported: ExportedModel) -> ServedModel:
        """Make the exported version the one that answers. The model store's champion alias is the caller's."""

    @abstractmethod
    def served(self) -> list[dict[str, Any]]:
        """The loaded versions: ``[{"name", "version", "state"}]`` (state READY when it answers)."""

    @abstractmethod
    def predict(self, rows: pd.DataFrame) -> dict[str, Any]:
        """Score raw rows on the champion: ``{"model", "version", "labels", "classes", "probabilities"}``
        for classifiers, ``{"model", "version", "predictions"}`` for regressors."""

    def running(self) -> bool:
        """Its process exists, answering or not. The level-3 watchdog restarts a server that is gone at once, and
        one that runs without answering only after `maturity.watchdog.hung_s` (a busy server is not killed).
        Default: :meth:`live`, for a flavor with no process of its own to look at."""
        return self.live()

    def urls(self) -> dict[str, str]:
        """Every address it answers on, for `mlops status` (at least ``{"url": self.url}``)."""
        return {"url": self.url}

    def ports(self) -> list[tuple[str, int]]:
        """(host, port) pairs it listens on locally: `mlops down` waits until they are free."""
        return []

    def statistics(self) -> list[dict[str, Any]]:
        """Per loaded version: requests, failures, latencies (empty when the server keeps none)."""
        return []

    def endpoint(self, version: int) -> str:
        return f"{self.url}/v2/models/{self.cfg.serving.model_name}/versions/{version}/infer"

    def champion_served(self, version: int) -> bool:
        """Whether `version` of this recipe's model answers now."""
        return any(m["name"] == self.cfg.serving.model_name and m["state"] == "READY"
                   and str(m["version"]) == str(version) for m in self.served())

    def answering_version(self) -> int | None:
        """The version a request that names none gets. Here Triton's rule, the highest READY one; a flavor
        that routes otherwise says so by overriding this."""
        ready = [int(m["version"]) for m in self.served() if m["name"] == self.cfg.serving.model_name
                 and m["state"] == "READY"]
        return max(ready) if ready else None
