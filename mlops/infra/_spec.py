"""What a Pulumi program is given: the pure, Pulumi-free input of every stack program.

The maturity level decides the components (:func:`components_for_level`); the stack's
parameters decide how each is built. Nothing here imports Pulumi.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from mlops.errors import ConfigError, Problem
from mlops.recipe.schema import Config, StackParameters

COMPONENTS = ("store", "tracking", "data_schedule", "training", "orchestration", "serving", "monitoring")

# What each maturity level adds to the one below it. The single source of truth until the Plan's
# infrastructure section exists; then `InfraSpec.from_config` reads that section instead.
LEVEL_COMPONENTS: dict[int, tuple[str, ...]] = {
    0: ("store", "tracking"),
    1: ("data_schedule",),
    2: ("training", "orchestration"),
    3: ("serving",),
    4: ("monitoring",),
}


def components_for_level(level: int) -> tuple[str, ...]:
    """The infrastructure components of maturity `level` (0-4), in provisioning order."""
    if level not in LEVEL_COMPONENTS:
        raise ValueError(f"maturity level must be 0-4, got {level!r}")
    wanted = {c for lv in range(level + 1) for c in LEVEL_COMPONENTS[lv]}
    return tuple(c for c in COMPONENTS if c in wanted)


@dataclass(frozen=True)
class InfraSpec:
    """The input of a stack program: everything it needs, nothing it doesn't."""

    name: str  # the recipe/model name: one Pulumi stack per recipe
    stack: str  # stack template name (stacks/<stack>.yaml)
    program: str  # registered Pulumi program, e.g. reasonable_scale
    level: int
    components: tuple[str, ...]
    params: StackParameters
    region: str
    model_name: str
    devices: int = 1
    num_nodes: int = 1

    @property
    def prefix(self) -> str:
        # S3 bucket and Kubernetes object names allow neither `_` nor capitals.
        raw = self.params.name_prefix or f"mlops-{self.name}"
        return re.sub(r"[^a-z0-9-]", "-", raw.lower())[:40].rstrip("-")

    @property
    def tags(self) -> dict[str, str]:
        return {"mlops:recipe": self.name, "mlops:stack": self.stack,
                "managed-by": "pulumi", **self.params.tags}

    def has(self, component: str) -> bool:
        return component in self.components

    @classmethod
    def from_config(cls, cfg: Config, level: int | None = None) -> InfraSpec:
        if cfg.stack.pulumi_project is None:
            raise ConfigError([Problem(
                "stack.pulumi_project", f"is null in stack {cfg.stack.name!r}: it provisions nothing, so there is no "
                "Pulumi program, spec or `mlops:spec` config for it",
                f"stack={cfg.stack.name}", "`mlops stack list` shows the stacks with a Pulumi project, e.g. "
                "stack=reasonable-scale")])
        lv = cfg.maturity.level if level is None else level
        p = cfg.stack.parameters
        return cls(
            name=cfg.name, stack=cfg.stack.name, program=cfg.stack.pulumi_project, level=lv,
            components=components_for_level(lv), params=p,
            region=p.region or cfg.target.region or "us-east-1", model_name=cfg.serving.model_name,
            devices=cfg.compute.devices if isinstance(cfg.compute.devices, int) else 1,
            num_nodes=cfg.compute.num_nodes,
        )

    # Standalone `pulumi up` reads the same spec from the stack's config (Pulumi.<stack>.yaml, `mlops:spec`).
    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "stack": self.stack, "program": self.program, "level": self.level,
                "region": self.region, "model_name": self.model_name, "devices": self.devices,
                "num_nodes": self.num_nodes, "parameters": self.params.model_dump(mode="json", exclude_defaults=True)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> InfraSpec:
        d = json.loads(data) if isinstance(data, str) else dict(data)
        level = int(d.get("level", 0))
        return cls(name=d["name"], stack=d.get("stack", d["program"]), program=d["program"], level=level,
                   components=components_for_level(level),
                   params=StackParameters.model_validate(d.get("parameters") or {}),
                   region=d.get("region") or "us-east-1", model_name=d.get("model_name", d["name"]),
                   devices=int(d.get("devices", 1)), num_nodes=int(d.get("num_nodes", 1)))
