"""The target interface: where a recipe runs. A target flavor is constructed as ``Impl(cfg, project)``.

Python::

    target = stack.target                 # the flavor the recipe's `target.kind` names
    target.planned_services()             # what `up` would start or reuse (`mlops plan`, read-only)
    result = target.up(progress=True)     # bring the recipe to READY (or provision it)
    target.status()                       # services, served models, registry (`mlops status`)
    target.down()                         # stop what `up` started, from saved state alone

YAML::

    target:
      kind: local           # conf/target/local.yaml: this machine; `aws`: Pulumi's Automation API
      state_dir: .mlops

Built-ins: `local` (mlops/targets/_local.py) and `aws` (mlops/targets/_aws.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops._layout import Layout

if TYPE_CHECKING:
    from mlops.recipe.schema import Config


class Target(ABC):
    def __init__(self, cfg: Config, project: Path):
        self.cfg = cfg
        self.project = Path(project)
        self.state_dir = (self.project / cfg.target.state_dir).resolve()
        self.layout = Layout(self.state_dir)

    @abstractmethod
    def planned_services(self) -> list[dict[str, Any]]:
        """``[{"name", "url", "action"}]``: what `up` would start, reuse or provision. Read-only."""

    @abstractmethod
    def up(self, progress: bool = False, rerun: bool = False) -> dict[str, Any]:
        """Bring the recipe to its Plan's state; returns what is served (or provisioned)."""

    @abstractmethod
    def down(self) -> dict[str, bool]:
        """Stop (or destroy) what `up` started: ``{service: stopped}``."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """``{"services": {...}, ...}`` for `mlops status`."""
