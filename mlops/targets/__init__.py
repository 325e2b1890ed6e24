"""Where a recipe runs: `target=local` (this machine) or `target=aws` (Pulumi Automation API)."""

from __future__ import annotations

from pathlib import Path

from mlops.recipe.schema import Config
from mlops.targets._aws import AwsTarget
from mlops.targets._local import LocalTarget


def get_target(cfg: Config, project: Path) -> LocalTarget | AwsTarget:
    return LocalTarget(cfg, project) if cfg.target.kind == "local" else AwsTarget(cfg, project)


__all__ = sorted(["AwsTarget", "LocalTarget", "get_target"])
