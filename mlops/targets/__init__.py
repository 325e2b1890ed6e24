"""Where a recipe runs: a target flavor (`target.kind`): `local` (this machine) or `aws` (Pulumi Automation API)."""

from __future__ import annotations

from pathlib import Path

from mlops.recipe.schema import Config
from mlops.targets._aws import AwsTarget
from mlops.targets._base import Target
from mlops.targets._local import LocalTarget


def get_target(cfg: Config, project: Path) -> Target:
    """The target flavor `cfg.target.kind` names (mlops.flavors)."""
    from mlops.flavors import get

    return get("target", cfg.target.kind).load()(cfg, project)


__all__ = sorted(["AwsTarget", "LocalTarget", "Target", "get_target"])
